"""Write docs/reference/api.md from the .proto files under proto/: their comments are the text.

    python -m tests.tools.protodoc          # write the page
    python -m tests.tools.protodoc --check  # fail when the committed page is stale (CI)

protoc parses the files (with source info, so every comment is kept) into a descriptor
set; the page lists each file's services, messages and enums in source order.
"""

from __future__ import annotations

import tempfile
from importlib.resources import files
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from .docgen import ROOT, cell, escape_outside_code, run

PROTO = ROOT / "proto"
TARGET = ROOT / "docs" / "reference" / "api.md"

# Field numbers in descriptor.proto, the steps of a SourceCodeInfo.Location path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
SERVICE_METHOD = 2
ENUM_VALUE = 2

Path_ = tuple[int, ...]
Comments = dict[Path_, str]
FDP = descriptor_pb2.FieldDescriptorProto
LABELS = {FDP.LABEL_REPEATED: "repeated "}
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FDP.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    sources = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = str(files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO}",
                f"-I{well_known}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *sources,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def comments(proto: descriptor_pb2.FileDescriptorProto) -> Comments:
    found: Comments = {}
    for location in proto.source_code_info.location:
        text = location.leading_comments or location.trailing_comments
        if text.strip():
            joined = " ".join(line.strip() for line in text.splitlines())
            found[tuple(location.path)] = escape_outside_code(joined)
    return found


def type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
        name = field.type_name.lstrip(".")
        return name.removeprefix("broker.api.v1.")
    return SCALARS[field.type]


def anchor(name: str) -> str:
    return name.lower().replace(".", "")


def link(name: str, local: set[str]) -> str:
    return f"[{name}](#{anchor(name)})" if name in local else f"`{name}`"


def render_service(
    service: descriptor_pb2.ServiceDescriptorProto, path: Path_, notes: Comments, local: set[str]
) -> list[str]:
    lines = [f"### {service.name}", "", notes.get(path, ""), ""]
    lines += ["| method | request | response | what it does |", "|---|---|---|---|"]
    for i, method in enumerate(service.method):
        request = ("stream " if method.client_streaming else "") + link(
            method.input_type.removeprefix(".broker.api.v1."), local
        )
        response = ("stream " if method.server_streaming else "") + link(
            method.output_type.removeprefix(".broker.api.v1."), local
        )
        text = cell(notes.get((*path, SERVICE_METHOD, i), ""))
        lines.append(f"| `{method.name}` | {request} | {response} | {text} |")
    return [*lines, ""]


def render_message(
    message: descriptor_pb2.DescriptorProto,
    prefix: str,
    path: Path_,
    notes: Comments,
    local: set[str],
) -> list[str]:
    name = prefix + message.name
    maps = {f"{name}.{n.name}": n for n in message.nested_type if n.options.map_entry}
    lines = [f"### {name}", "", notes.get(path, ""), ""]
    if message.field:
        lines += ["| field | number | type | description |", "|---|---|---|---|"]
        for i, field in enumerate(message.field):
            entry = maps.get(field.type_name.removeprefix(".broker.api.v1."))
            if entry is not None:
                kind = f"`map<{type_name(entry.field[0])}, {type_name(entry.field[1])}>`"
            else:
                kind = LABELS.get(field.label, "") + link(type_name(field), local)
            if field.HasField("oneof_index") and not field.proto3_optional:
                kind += f" (one of `{message.oneof_decl[field.oneof_index].name}`)"
            elif field.proto3_optional:
                kind = "optional " + kind
            text = cell(notes.get((*path, MESSAGE_FIELD, i), ""))
            lines.append(f"| `{field.name}` | {field.number} | {kind} | {text} |")
        lines.append("")
    for i, nested in enumerate(message.nested_type):
        if nested.options.map_entry:
            continue
        lines += render_message(nested, f"{name}.", (*path, MESSAGE_NESTED, i), notes, local)
    for i, enum in enumerate(message.enum_type):
        lines += render_enum(enum, f"{name}.", (*path, MESSAGE_ENUM, i), notes)
    return lines


def render_enum(
    enum: descriptor_pb2.EnumDescriptorProto, prefix: str, path: Path_, notes: Comments
) -> list[str]:
    lines = [f"### {prefix}{enum.name}", "", notes.get(path, ""), ""]
    lines += ["| value | number | description |", "|---|---|---|"]
    for i, value in enumerate(enum.value):
        text = cell(notes.get((*path, ENUM_VALUE, i), ""))
        lines.append(f"| `{value.name}` | {value.number} | {text} |")
    return [*lines, ""]


def local_names(proto: descriptor_pb2.FileDescriptorProto) -> set[str]:
    names: set[str] = set()

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        names.add(prefix + message.name)
        for nested in message.nested_type:
            walk(nested, f"{prefix}{message.name}.")
        names.update(f"{prefix}{message.name}.{e.name}" for e in message.enum_type)

    for message in proto.message_type:
        walk(message, "")
    names.update(e.name for e in proto.enum_type)
    return names


def render() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the .proto files under `proto/` by `python -m tests.tools.protodoc`: "
        "edit the comments there, not this page. Package `broker.api.v1`; the broker serves "
        "`BrokerService` on the workload listener (TLS + a projected service-account token) "
        "and the other services on the admin listener (mutual TLS). How to call them: "
        "[the API guide](../api.md).",
        "",
    ]
    every: set[str] = set()
    protos = [p for p in descriptor_set().file if p.package == "broker.api.v1"]
    for proto in protos:
        every |= local_names(proto)
    for proto in protos:
        notes = comments(proto)
        out += [f"## {proto.name.rsplit('/', 1)[-1]}", ""]
        header = notes.get((12,), "") or notes.get((2,), "")  # syntax or package comment
        if header:
            out += [header, ""]
        for i, service in enumerate(proto.service):
            out += render_service(service, (FILE_SERVICE, i), notes, every)
        for i, message in enumerate(proto.message_type):
            out += render_message(message, "", (FILE_MESSAGE, i), notes, every)
        for i, enum in enumerate(proto.enum_type):
            out += render_enum(enum, "", (FILE_ENUM, i), notes)
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main() -> None:
    run(TARGET, render, "tests.tools.protodoc", __doc__)


if __name__ == "__main__":
    main()
