"""The /archive/raw table: the indexed raw files as a VOTable, with a DataLink descriptor.

An archive operator (or TOPCAT) lists what the service can reduce without a TAP service of their
own: one row per indexed raw file with the keywords the cascade derives from its header (night,
exposure time, binning... whatever header convention the file uses), and its DataLink URL. The
table also carries a DataLink service descriptor bound to its ID column, so clients that know
DataLink (TOPCAT's activation actions, pyvo) follow the links without being told the URL pattern;
it is the same block an operator adds to their own TAP results (docs/operators.md). A SODA sync
descriptor, bound to the same column with TARGET fixed to raw, cuts a row's frame as archived
(pyvo's ``record.processed(circle=...)``); its parameters carry no limits, which differ per row
(each file's DataLink document has its own).

Pure: parameters in, VOTable bytes out. Filters compare values exactly (DALI: parameter names
are case-insensitive, values are not); a repeated filter means any of its values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from astropy.io.votable.tree import Field, Group, Info, Param, Resource, TableElement, VOTableFile

from soda_reduce.vo.dali import UsageError, case_insensitive_params, single
from soda_reduce.vo.descriptors import (
    ServiceDescriptor,
    append_descriptors,
    cutout_descriptor,
    raw_target_param,
)
from soda_reduce.vo.jobinfo import xml_safe
from soda_reduce.vo.results import VOTABLE_VERSION, votable_bytes

DATALINK_STANDARD_ID: Final = "ivo://ivoa.net/std/DataLink#links-1.1"
DATALINK_CONTENT_TYPE: Final = "application/x-votable+xml;content=datalink"
DEFAULT_MAXREC: Final = 10_000
HARD_MAXREC: Final = 100_000  # MAXREC above this is lowered to it (DALI allows a hard limit)
FILTERS: Final = ("INSTRUMENT", "CATEGORY", "NIGHT", "OBJECT")
VOTABLE_FORMATS: Final = frozenset(
    {
        "votable",
        "application/x-votable+xml",
        "text/xml",
        "application/x-votable+xml;serialization=tabledata",
    }
)
_ID_FIELD: Final = "ID"  # the XML ID of the ID column (as its name), which the descriptor uses


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    datatype: str
    ucd: str
    description: str
    unit: str | None = None
    xtype: str | None = None


# ID, path and object may hold any character a file name or header can; the others are codes.
COLUMNS: Final = (
    Column("ID", "unicodeChar", "meta.id;meta.main", "IVOA identifier of the raw file"),
    Column("path", "unicodeChar", "meta.id;meta.file", "Path of the file under the archive root"),
    Column("instrument", "char", "meta.id;instr", "Instrument (INSTRUME or CAMERA)"),
    Column("category", "char", "meta.code.class", "Classification by the pipeline, e.g. BIAS"),
    Column("object", "unicodeChar", "meta.id;src", "Target name (OBJECT)"),
    Column("night", "char", "meta.id;time", "Local date on which the observing night began"),
    Column(
        "date_obs",
        "char",
        "time.start;obs.exposure",
        "Start of the exposure (DATE-OBS, UTC)",
        xtype="timestamp",
    ),
    Column(
        "exptime",
        "double",
        "time.duration;obs.exposure",
        "Exposure time (EXPTIME or EXPOSURE)",
        unit="s",
    ),
    Column("filter", "char", "meta.id;instr.filter", "Filter (FILTER)"),
    Column("binning", "char", "meta.code;instr.det", "Detector binning, XxY"),
    Column("datalink_url", "char", "meta.ref.url", "DataLink links of the file"),
)


@dataclass(frozen=True, slots=True)
class RawRow:
    """One raw file as the table shows it; None is a null cell."""

    id: str
    path: str
    instrument: str | None
    category: str | None
    object: str | None
    night: str | None
    date_obs: str | None
    exptime: float | None
    filter: str | None
    binning: str | None

    def filter_value(self, name: str) -> str | None:
        return {
            "INSTRUMENT": self.instrument,
            "CATEGORY": self.category,
            "NIGHT": self.night,
            "OBJECT": self.object,
        }[name]


@dataclass(frozen=True)
class RawQuery:
    """Accepted values per filter (empty: no constraint) and the row limit."""

    filters: Mapping[str, frozenset[str]]
    maxrec: int = DEFAULT_MAXREC

    def accepts(self, row: RawRow) -> bool:
        return all(row.filter_value(name) in values for name, values in self.filters.items())


def parse_raw_query(pairs: Iterable[tuple[str, str]] | Mapping[str, str]) -> RawQuery:
    """Filters and MAXREC from the request; unknown parameters are ignored, as DALI asks."""
    params = case_insensitive_params(pairs)
    filters = {name: frozenset(params[name]) for name in FILTERS if params.get(name)}
    maxrec_text = single(params, "MAXREC")
    maxrec = DEFAULT_MAXREC
    if maxrec_text is not None:
        try:
            maxrec = int(maxrec_text.strip())
        except ValueError:
            raise UsageError(f"MAXREC must be an integer, not {maxrec_text!r}") from None
        if maxrec < 0:
            raise UsageError(f"MAXREC must be >= 0, not {maxrec}")
    fmt = single(params, "RESPONSEFORMAT")
    if fmt is not None and fmt.strip().lower().replace(" ", "") not in VOTABLE_FORMATS:
        raise UsageError(f"RESPONSEFORMAT {fmt!r} is not supported: only VOTable")
    return RawQuery(filters, min(maxrec, HARD_MAXREC))


def select(query: RawQuery, rows: Iterable[RawRow]) -> tuple[list[RawRow], bool]:
    """The matching rows up to MAXREC, and whether more matched (DALI OVERFLOW)."""
    chosen: list[RawRow] = []
    for row in rows:
        if not query.accepts(row):
            continue
        if len(chosen) == query.maxrec:
            return chosen, True
        chosen.append(row)
    return chosen, False


def datalink_url(datalink_endpoint: str, file_id: str) -> str:
    return f"{datalink_endpoint}?ID={quote(file_id, safe='')}"


def _ascii(value: str | None) -> str | None:
    """VOTable `char` is ASCII: anything else is written as a Python escape, never dropped."""
    if value is None:
        return None
    return xml_safe(
        value if value.isascii() else value.encode("ascii", "backslashreplace").decode()
    )


def _cells(row: RawRow, datalink_endpoint: str) -> tuple[object, ...]:
    return (
        xml_safe(row.id),
        xml_safe(row.path),
        _ascii(row.instrument),
        _ascii(row.category),
        None if row.object is None else xml_safe(row.object),
        _ascii(row.night),
        _ascii(row.date_obs),
        row.exptime,
        _ascii(row.filter),
        _ascii(row.binning),
        _ascii(datalink_url(datalink_endpoint, row.id)),
    )


def _filled(cell: object, column: Column) -> object:
    """A placeholder for a null cell (masked), of the column's type."""
    if cell is not None:
        return cell
    return 0.0 if column.datatype == "double" else ""


def _param(votable: VOTableFile, name: str, value: str, **extra: str) -> Param:
    param = Param(votable, name=name, datatype="char", arraysize="*", value=value, **extra)
    param.ID = None  # astropy derives IDs from names; they must stay unique in the document
    return param


def datalink_descriptor(votable: VOTableFile, datalink_endpoint: str, id_field: str) -> Resource:
    """The DataLink 1.1 service descriptor whose ID parameter takes its value from `id_field`."""
    resource = Resource(type="meta", utype="adhoc:service")
    resource.params.append(_param(votable, "standardID", DATALINK_STANDARD_ID))
    resource.params.append(_param(votable, "accessURL", datalink_endpoint))
    resource.params.append(_param(votable, "contentType", DATALINK_CONTENT_TYPE))
    group = Group(resource, name="inputParams")
    group.ID = None
    id_param = _param(votable, "ID", "", ucd="meta.id;meta.main", ref=id_field)
    id_param.datatype = "unicodeChar"  # as the ID column: file names may be any text
    group.entries.append(id_param)
    resource.groups.append(group)
    return resource


def raw_votable(
    rows: Sequence[RawRow],
    *,
    overflow: bool,
    datalink_endpoint: str,
    sync_endpoint: str | None = None,
) -> bytes:
    """The table document: QUERY_STATUS OK or OVERFLOW, the rows, then the DataLink
    descriptor, and the SODA sync one when ``sync_endpoint`` is given."""
    votable = VOTableFile(version=VOTABLE_VERSION)
    resource = Resource(type="results")
    votable.resources.append(resource)
    status = Info(ID="placeholder", name="QUERY_STATUS", value="OVERFLOW" if overflow else "OK")
    status.ID = None
    resource.infos.append(status)
    table = TableElement(votable, name="raw_files")
    table.ID = None
    table.description = "Raw files indexed by soda-reduce, with their DataLink links"
    resource.tables.append(table)
    for col in COLUMNS:
        field = Field(
            votable,
            ID=_ID_FIELD if col.name == "ID" else None,
            name=col.name,
            datatype=col.datatype,
            arraysize=None if col.datatype == "double" else "*",
            ucd=col.ucd,
            unit=col.unit,
            xtype=col.xtype,
        )
        field.description = col.description
        table.fields.append(field)
    table.create_arrays(len(rows))
    for i, row in enumerate(rows):
        cells = _cells(row, datalink_endpoint)
        table.array[i] = tuple(_filled(c, col) for c, col in zip(cells, COLUMNS, strict=True))
        table.array.mask[i] = tuple(c is None for c in cells)
    votable.resources.append(datalink_descriptor(votable, datalink_endpoint, _ID_FIELD))
    document = votable_bytes(votable)
    if sync_endpoint is None:
        return document
    return append_descriptors(document, [raw_cutout_descriptor(sync_endpoint)])


def raw_cutout_descriptor(sync_endpoint: str) -> ServiceDescriptor:
    """SODA sync on the row's frame as archived (ID from the ID column, TARGET=raw)."""
    return cutout_descriptor(
        "soda-cutout",
        sync_endpoint,
        "",
        id_ref=_ID_FIELD,
        header=None,
        what="the raw frame of the row as archived",
        fixed=(raw_target_param(),),
        id_datatype="unicodeChar",
    )
