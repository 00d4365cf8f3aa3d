"""The `products` result of a reduction job: a VOTable listing every product with its links.

Built with astropy.io.votable so escaping, nulls and datatypes are right by construction.
Column names and UCDs follow DataLink (ID, access_url, content_type, content_length,
semantics), so a client that knows DataLink tables can read this one without learning a new
vocabulary; the extra columns (category, task, dataset, step_key, main) say where a product
comes from. Version 1.4 because Debian's STILTS 3.4.7 (votlint) rejects 1.5.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile

from soda_reduce.vo.jobinfo import xml_safe

PRODUCTS_MEDIA_TYPE: Final = "application/x-votable+xml"
VOTABLE_VERSION: Final = "1.4"
RESERVED_INFOS: Final = frozenset({"QUERY_STATUS", "job_id"})


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    datatype: str
    ucd: str | None
    description: str
    unit: str | None = None


# unicodeChar only for the dataset label, which is meant for people; the rest are identifiers,
# URLs and codes, for which VOTable's ASCII `char` is right (and checked in ProductRow).
COLUMNS: Final = (
    _Column("ID", "char", "meta.id;meta.main", "IVOA identifier of the product"),
    _Column("access_url", "char", "meta.ref.url", "URL to download the product"),
    _Column("semantics", "char", "meta.code", "DataLink semantics; #this: the product itself"),
    _Column("category", "char", "meta.code.class", "Product category, e.g. MASTER_BIAS"),
    _Column("task", "char", "meta.code", "Pipeline task (recipe) that made the product"),
    _Column("content_type", "char", "meta.code.mime", "MIME type of the product"),
    _Column("content_length", "long", "phys.size;meta.file", "Size of the product", unit="byte"),
    _Column("datalink_url", "char", "meta.ref.url", "DataLink links of the product"),
    _Column("dataset", "unicodeChar", "meta.id", "Label of the dataset (see the job's jobInfo)"),
    _Column("step_key", "char", "meta.id", "Cache key of the step that made the product"),
    _Column("main", "boolean", None, "True for the main product of its step"),
)
_ASCII_COLUMNS: Final = tuple(c.name for c in COLUMNS if c.datatype == "char")


@dataclass(frozen=True, slots=True)
class ProductRow:
    """One product of a job; `main` marks the step's main product (e.g. the reduced frame).

    `size` is None when unknown (written as a null content_length).
    """

    id: str
    access_url: str
    category: str
    task: str
    content_type: str
    size: int | None
    datalink_url: str
    dataset: str
    step_key: str
    main: bool
    semantics: str = "#this"

    def __post_init__(self) -> None:
        # VOTable `char` is ASCII; astropy would only warn and write an invalid document.
        for name in _ASCII_COLUMNS:
            value = getattr(self, "id" if name == "ID" else name)
            if not value.isascii():
                raise ValueError(f"product {self.id!r}: {name} must be ASCII: {value!r}")
        if self.size is not None and self.size < 0:
            raise ValueError(f"product {self.id!r}: size must be >= 0, not {self.size}")

    def values(self) -> tuple[str | int | bool, ...]:
        """The cells in COLUMNS order, XML-safe (a None size becomes 0, masked by the caller)."""
        return (
            xml_safe(self.id),
            xml_safe(self.access_url),
            xml_safe(self.semantics),
            xml_safe(self.category),
            xml_safe(self.task),
            xml_safe(self.content_type),
            0 if self.size is None else self.size,
            xml_safe(self.datalink_url),
            xml_safe(self.dataset),
            xml_safe(self.step_key),
            self.main,
        )


def _info(name: str, value: str) -> Info:
    # Without an ID astropy derives one from the name (warning W03 when the name is not an
    # NCName), but IDs must be unique in the document and our names are free text: none at all.
    info = Info(ID="placeholder", name=xml_safe(name), value=xml_safe(value))
    info.ID = None
    return info


def products_votable(
    rows: Sequence[ProductRow], *, job_id: str, info: Mapping[str, str] | None = None
) -> VOTableFile:
    """The products table as an astropy VOTableFile (for callers that want to add to it)."""
    votable = VOTableFile(version=VOTABLE_VERSION)
    resource = Resource(type="results")
    votable.resources.append(resource)
    resource.infos.append(_info("QUERY_STATUS", "OK"))
    resource.infos.append(_info("job_id", job_id))
    for name, value in (info or {}).items():
        if not name or name in RESERVED_INFOS:
            raise ValueError(f"INFO name {name!r} is empty or reserved")
        resource.infos.append(_info(name, value))
    table = TableElement(votable, name="products")
    resource.tables.append(table)
    for col in COLUMNS:
        field = Field(
            votable,
            name=col.name,
            datatype=col.datatype,
            arraysize="*" if col.datatype in ("char", "unicodeChar") else None,
            ucd=col.ucd,
            unit=col.unit,
        )
        field.description = col.description
        table.fields.append(field)
    table.create_arrays(len(rows))
    size_index = [c.name for c in COLUMNS].index("content_length")
    for i, row in enumerate(rows):
        table.array[i] = row.values()
        if row.size is None:
            mask = [False] * len(COLUMNS)
            mask[size_index] = True
            table.array.mask[i] = tuple(mask)
    return votable


def render_products_votable(
    rows: Sequence[ProductRow], *, job_id: str, info: Mapping[str, str] | None = None
) -> bytes:
    """The `products` UWS result document: RESOURCE type="results", QUERY_STATUS=OK.

    `info` adds one INFO per item next to QUERY_STATUS and job_id (e.g. pipeline, target).
    """
    return votable_bytes(products_votable(rows, job_id=job_id, info=info))


def votable_bytes(votable: VOTableFile) -> bytes:
    """Serialize with astropy's pure-Python TABLEDATA writer, never its C one.

    The C writer (astropy/io/votable/src/tablewriter.c, still in astropy 8.0.2) writes its NUL
    terminator one byte past its buffer whenever a row's text is exactly a power of two long
    (256, 512, 1024... bytes): silent heap corruption that crashes the process later, e.g. in
    the garbage collector. The Python writer produces the same document; our tables are small.
    """
    out = io.BytesIO()
    votable.to_xml(out, _debug_python_based_parser=True)
    return out.getvalue()
