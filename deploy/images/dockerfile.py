"""Parse the small Dockerfile subset Mainsail's image files use, with the standard library only.

Why: machines without a container engine build the same `deploy/images/Dockerfile.*` that
Docker users build (`build.py`), so those files are read here rather than translated into a
second description of each image. Anything outside the subset is refused with the line number,
so a Dockerfile edit that Docker would accept but this builder would silently mis-build fails
loudly instead.

The subset: one `FROM` (no stages), `RUN` in shell form with `--mount=type=cache,...` options,
`COPY [--chown=UID:GID] SRC... DEST` from the build context, `ENV`, `WORKDIR`, `USER`,
`ENTRYPOINT` and `CMD` (JSON exec form or shell form), `LABEL`, comments, parser directives and
backslash continuations.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath


class DockerfileError(ValueError):
    """A line outside the supported subset, or malformed; the message names the line."""


@dataclass(frozen=True)
class CacheMount:
    """`RUN --mount=type=cache,id=ID,target=DIR`: a directory kept between builds."""

    target: str
    id: str


@dataclass(frozen=True)
class Run:
    """A shell command with the ENV, WORKDIR and USER in force at its line."""

    command: str
    mounts: tuple[CacheMount, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""


@dataclass(frozen=True)
class Copy:
    """Context paths copied to `dest` (absolute: resolved against the WORKDIR of its line)."""

    sources: tuple[str, ...]
    dest: str
    chown: tuple[int, int] | None = None


@dataclass(frozen=True)
class Workdir:
    path: str


Step = Run | Copy | Workdir


@dataclass
class Dockerfile:
    """The base image, the steps that change the file system, and the runtime config."""

    base: str
    steps: list[Step] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) pairs: continuations joined, comments dropped."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].rstrip())
            continue
        buf.append(stripped)
        line = " ".join(part for part in buf if part)
        buf = []
        if line:
            out.append((start, line))
    if buf:
        raise DockerfileError(f"line {start}: continuation at end of file")
    return out


def _exec_form(number: int, keyword: str, rest: str) -> list[str]:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except json.JSONDecodeError as exc:
            raise DockerfileError(f"line {number}: {keyword}: bad JSON ({exc.msg})") from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"line {number}: {keyword}: must be a JSON list of strings")
        return value
    return ["/bin/sh", "-c", rest]


def _pairs(number: int, keyword: str, rest: str) -> dict[str, str]:
    """`K=V K2="v 2"` (or the legacy `K V` form) as a dict, in order."""
    words = shlex.split(rest)
    if not words:
        raise DockerfileError(f"line {number}: {keyword} needs a value")
    if "=" not in words[0]:
        key, _, value = rest.partition(" ")
        return {key: value.strip()}
    out: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise DockerfileError(f"line {number}: {keyword}: {word!r} is not KEY=VALUE")
        out[key] = value
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    """`$VAR` and `${VAR}` from earlier ENV lines, as Docker expands them in ENV and WORKDIR."""
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if ch == "$":
            if value.startswith("${", i):
                end = value.find("}", i)
                if end < 0:
                    raise DockerfileError(f"unterminated ${{ in {value!r}")
                name = value[i + 2 : end]
                i = end + 1
            else:
                j = i + 1
                while j < len(value) and (value[j].isalnum() or value[j] == "_"):
                    j += 1
                name = value[i + 1 : j]
                i = j
                if not name:
                    out.append("$")
                    continue
            out.append(env.get(name, ""))
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _mount(number: int, option: str) -> CacheMount:
    fields: dict[str, str] = {}
    for item in option.split(","):
        key, eq, value = item.partition("=")
        fields[key] = value if eq else "true"
    if fields.get("type") != "cache":
        raise DockerfileError(f"line {number}: RUN --mount: only type=cache is supported")
    target = fields.get("target") or fields.get("dst") or fields.get("destination")
    if not target or not target.startswith("/"):
        raise DockerfileError(f"line {number}: RUN --mount: needs an absolute target=")
    unknown = set(fields) - {"type", "target", "dst", "destination", "id", "sharing"}
    if unknown:
        raise DockerfileError(f"line {number}: RUN --mount: unsupported {sorted(unknown)}")
    return CacheMount(target=target, id=fields.get("id") or target)


def _chown(number: int, value: str) -> tuple[int, int]:
    user, _, group = value.partition(":")
    try:
        uid = int(user)
        gid = int(group) if group else uid
    except ValueError:
        raise DockerfileError(
            f"line {number}: COPY --chown: numeric UID[:GID] only (got {value!r})"
        ) from None
    return uid, gid


def parse(text: str) -> Dockerfile:
    """Parse `text`; raises `DockerfileError` naming the line on anything unsupported."""
    lines = _logical_lines(text)
    if not lines or not lines[0][1].upper().startswith("FROM "):
        raise DockerfileError("line 1: a Dockerfile must start with FROM")
    result: Dockerfile | None = None
    for number, line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            if result is not None:
                raise DockerfileError(f"line {number}: only one FROM (no build stages)")
            words = rest.split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise DockerfileError(f"line {number}: FROM IMAGE [AS NAME]")
            result = Dockerfile(base=words[0])
            continue
        assert result is not None
        if keyword == "RUN":
            mounts: list[CacheMount] = []
            while rest.startswith("--"):
                option, _, rest = rest.partition(" ")
                rest = rest.strip()
                if not option.startswith("--mount="):
                    raise DockerfileError(f"line {number}: RUN {option}: unsupported option")
                mounts.append(_mount(number, option[len("--mount=") :]))
            if not rest or rest.startswith("["):
                raise DockerfileError(f"line {number}: RUN: shell form only")
            env = tuple(result.env.items())
            result.steps.append(Run(rest, tuple(mounts), env, result.workdir, result.user))
        elif keyword == "COPY":
            words = shlex.split(rest)
            chown = None
            while words and words[0].startswith("--"):
                option = words.pop(0)
                if option.startswith("--chown="):
                    chown = _chown(number, option[len("--chown=") :])
                else:
                    raise DockerfileError(f"line {number}: COPY {option}: unsupported option")
            if len(words) < 2:
                raise DockerfileError(f"line {number}: COPY SRC... DEST")
            for src in words[:-1]:
                norm = posixpath.normpath(src)
                if norm.startswith("..") or norm.startswith("/") or any(c in src for c in "*?["):
                    raise DockerfileError(
                        f"line {number}: COPY {src}: must be a plain path inside the context"
                    )
            dest = _expand(words[-1], result.env)
            absolute = posixpath.normpath(posixpath.join(result.workdir, dest))
            if dest.endswith(("/", "/.")) or dest == ".":
                absolute = absolute.rstrip("/") + "/"
            result.steps.append(Copy(tuple(words[:-1]), absolute, chown))
        elif keyword == "ENV":
            for key, value in _pairs(number, keyword, rest).items():
                result.env[key] = _expand(value, result.env)
        elif keyword == "LABEL":
            result.labels.update(_pairs(number, keyword, rest))
        elif keyword == "WORKDIR":
            path = _expand(rest, result.env)
            result.workdir = str(PurePosixPath(result.workdir, path))
            result.steps.append(Workdir(result.workdir))
        elif keyword == "USER":
            if not rest or " " in rest:
                raise DockerfileError(f"line {number}: USER NAME[:GROUP]")
            result.user = rest
        elif keyword == "ENTRYPOINT":
            result.entrypoint = _exec_form(number, keyword, rest)
        elif keyword == "CMD":
            result.cmd = _exec_form(number, keyword, rest)
        else:
            raise DockerfileError(f"line {number}: {keyword}: not supported by this builder")
    assert result is not None
    return result
