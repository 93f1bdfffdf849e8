"""Make the pb1-detectron2==0.6 sdist installable in pure-Python mode.

Its C++ sources are missing, so the extension build is skipped
(``ext_modules=[]``); the ``black`` pin and the direct-URL extra are dropped
because nothing here needs them and recent pip rejects the latter.
"""
import re
import sys

path = sys.argv[1]
src = open(path).read()
patched = src.replace("ext_modules=get_extensions(),", "ext_modules=[],")
patched = re.sub(r'\s*"black==[^"]*",', "", patched)
patched = re.sub(r'\s*"panopticapi @ [^"]*",', "", patched)
if "ext_modules=[]," not in patched:
    sys.exit(f"{path}: could not find 'ext_modules=get_extensions(),' to skip the C++ build")
open(path, "w").write(patched)
