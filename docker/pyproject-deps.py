"""Print the third-party requirements of the given pyproject.toml files, one per line.

The images install these in a layer of their own, before the project's sources are copied in,
so that editing the code does not reinstall onnxruntime, grpcio or torch's companions. The
project's own distributions (the names the given files define) are left out: they are
installed afterwards from the copied sources.

usage: python pyproject-deps.py PYPROJECT... > requirements.txt
"""

import re
import sys

import tomllib


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(paths: list[str]) -> None:
    projects = []
    for path in paths:
        with open(path, "rb") as f:
            projects.append(tomllib.load(f)["project"])
    own = {canonical(p["name"]) for p in projects}
    seen: set[str] = set()
    for project in projects:
        for requirement in project.get("dependencies", []):
            name = canonical(re.split(r"[\s\[<>=!~;@(]", requirement, maxsplit=1)[0])
            if name not in own and requirement not in seen:
                seen.add(requirement)
                print(requirement)


if __name__ == "__main__":
    main(sys.argv[1:])
