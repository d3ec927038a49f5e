"""Compiles proto/cairn/v1/*.proto into Python stubs with grpc_tools.protoc.

    /usr/bin/python3 examples/python/generate.py [--proto-dir DIR] [--out DIR]

Writes cairn/v1/*_pb2.py and *_pb2_grpc.py under --out (default
examples/python/gen, which git ignores), and does nothing when the stubs are
already newer than every .proto file. Works with Debian 12's packages
(python3-grpc-tools 1.14, whose protoc is 3.5.1, with python3-protobuf 3.21
and python3-grpcio 1.51) as well as with grpcio-tools from pip.
"""
import argparse
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, '..', '..', 'proto'))
DEFAULT_OUT = os.path.join(HERE, 'gen')


def generate(proto_dir=DEFAULT_PROTO_DIR, out=DEFAULT_OUT, quiet=False):
    """Generates the stubs into `out` unless they are up to date; returns `out`."""
    protos = sorted(glob.glob(os.path.join(proto_dir, 'cairn', 'v1', '*.proto')))
    if not protos:
        raise SystemExit(f'no cairn/v1/*.proto under {proto_dir} (pass --proto-dir)')
    outputs = [os.path.join(out, os.path.relpath(p, proto_dir))[: -len('.proto')] + suffix for p in protos for suffix in ('_pb2.py', '_pb2_grpc.py')]
    newest_input = max(os.path.getmtime(p) for p in protos)
    if all(os.path.exists(o) and os.path.getmtime(o) >= newest_input for o in outputs):
        return out
    os.makedirs(out, exist_ok=True)
    import grpc_tools  # the same interpreter's grpc_tools: python3-grpc-tools on Debian

    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    # Cairn's protos import none of them today, so this include is only a
    # precaution for when one does; `python -m grpc_tools.protoc` in 1.14 does
    # not add it by itself (newer grpcio-tools do).
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')
    cmd = [sys.executable, '-m', 'grpc_tools.protoc', f'-I{proto_dir}', f'-I{well_known}', f'--python_out={out}', f'--grpc_python_out={out}', *protos]
    subprocess.run(cmd, check=True)
    if not quiet:
        print(f'generated stubs for {len(protos)} files in {out}', file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--proto-dir', default=DEFAULT_PROTO_DIR, help='the directory holding cairn/v1/*.proto (default: the repository\'s proto/)')
    ap.add_argument('--out', default=DEFAULT_OUT, help='where to write the stubs (default: examples/python/gen)')
    a = ap.parse_args()
    print(generate(a.proto_dir, a.out))


if __name__ == '__main__':
    main()
