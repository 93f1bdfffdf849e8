"""Person-search datasets (CUHK-SYSU, PRW, synthetic), their registration and the mapper."""
