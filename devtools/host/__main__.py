"""python -m devtools.host provision|frontend|requirements|serve (see devtools/host/__init__.py)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from .comfy_server import ComfyServer
from .layout import DEFAULT_CACHE
from .provision import TREES, comfy_requirements, provision, provision_frontend


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.host", description="ComfyUI host for EMMA")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("provision", help="make a ComfyUI tree once; print its path")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--tree", choices=TREES, default=None,
                   help="which tree (default: $EMMA_COMFYUI_DIR if set, else the default tree)")
    f = sub.add_parser("frontend", help="unpack a comfyui-frontend-package version once; print its static folder")
    f.add_argument("version")
    f.add_argument("--cache-dir", type=Path, default=None)
    r = sub.add_parser("requirements", help="print a tree's requirements (minus torch), one per line")
    r.add_argument("--cache-dir", type=Path, default=None)
    r.add_argument("--tree", choices=TREES, default=None)
    s = sub.add_parser("serve", help="run a ComfyUI with this pack until Ctrl-C; print its URL")
    s.add_argument("--models-root", type=Path, default=DEFAULT_CACHE / "test-models")
    s.add_argument("--front-end-root", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.cmd == "provision":
        print(provision(args.cache_dir, args.tree))
    elif args.cmd == "frontend":
        print(provision_frontend(args.version, args.cache_dir))
    elif args.cmd == "requirements":
        print("\n".join(comfy_requirements(provision(args.cache_dir, args.tree))))
    elif args.cmd == "serve":
        with ComfyServer(provision(), args.models_root, front_end_root=args.front_end_root) as srv:
            print(srv.url, flush=True)
            print(f"log: {srv.log_path}", flush=True)
            try:
                while srv.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
