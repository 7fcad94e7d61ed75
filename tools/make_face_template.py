"""Write Resources/Models/face_template.npz: the alignment template used when training from scratch.

Derived from the ICT-FaceKit neutral head (MIT licence, (c) 2020 USC Institute
for Creative Technologies). Usage: python tools/make_face_template.py [--ict PATH]
"""
import argparse
import os
from pathlib import Path

import numpy as np

from palnet.resources import face_template_path
from palnet.synth import face_template, load_ict

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ict", default=None)
    args = ap.parse_args()
    pts, modes = face_template(load_ict(args.ict))
    out = face_template_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(out) + ".tmp.npz"
    np.savez_compressed(tmp, points=pts.astype(np.float32), modes=modes.astype(np.float32), frame=np.array("x: subject's left, y: up, z: out of the face; mm"),
                        source=np.array("ICT-FaceKit neutral head, (c) 2020 USC Institute for Creative Technologies, MIT licence"))
    os.replace(tmp, out)
    print("wrote {} ({} points)".format(out, len(pts)))
