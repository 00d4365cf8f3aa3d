"""DataLink service descriptors for the SODA endpoints: "reduce this" (async) and cutouts (sync).

A descriptor is a RESOURCE type="meta" utype="adhoc:service" (DataLink 1.1 section 4): the
service's standardID and accessURL, and a GROUP "inputParams" whose PARAMs say what to send.
DataLink 1.1 4.1 gives PARAMs three roles, and a client UI shows them so:

- ``ref`` to a FIELD: the value comes from the row (the dataset's ID, from the ID column);
- a non-empty ``value``: fixed, clients always send it unchanged (only ``TARGET=raw`` of
  the raw-frame cutout descriptor: that descriptor *is* the raw cutout);
- ``value=""``: for the user, who may leave it empty. The default is in the description
  and, where it is one of a set, among the VALUES OPTIONs; MIN/MAX give known limits
  (the SODA parameters' from the dataset's WCS). The service applies the default to a
  parameter left absent or empty.

Written with lxml, not astropy: astropy writes an empty numeric PARAM as zeros ("0 0 0"
for a CIRCLE), which pyvo would then send as a real value; it also drops a RESOURCE's name
and gives every PARAM and GROUP an XML ID derived from its name, which repeats across
descriptors. Pure functions only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from lxml import etree

from soda_reduce.vo.job_request import RAW_TARGET
from soda_reduce.vo.jobinfo import xml_safe
from soda_reduce.vo.soda import (
    SODA_PARAMETERS,
    format_limit,
    param_limits_from_wcs,
    pol_options,
)

VOTABLE_NS: Final = "http://www.ivoa.net/xml/VOTable/v1.3"
SODA_ASYNC_ID: Final = "ivo://ivoa.net/std/SODA#async-1.0"
SODA_SYNC_ID: Final = "ivo://ivoa.net/std/SODA#sync-1.0"

PARAM_DATATYPES: Final = frozenset(
    {"char", "unicodeChar", "boolean", "short", "int", "long", "float", "double"}
)


@dataclass(frozen=True, slots=True)
class InputParam:
    """One PARAM of a descriptor's inputParams; value "" means the user supplies it.

    A non-empty value is fixed: DataLink 1.1 4.1 has clients always send it; ``ref`` names
    the FIELD whose value in the row is sent. Limits and options are given as values
    (numbers, strings, sequences for arrays) and written in VOTable's text form.
    """

    name: str
    datatype: str = "char"
    arraysize: str | None = None
    value: str = ""
    ref: str | None = None
    ucd: str | None = None
    unit: str | None = None
    xtype: str | None = None
    description: str = ""
    minimum: object = None
    maximum: object = None
    options: tuple[tuple[str, str], ...] = ()  # (label, value)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an input parameter needs a name")
        if self.datatype not in PARAM_DATATYPES:
            raise ValueError(f"parameter {self.name}: unknown datatype {self.datatype!r}")
        if self.ref is not None and self.value:
            raise ValueError(f"parameter {self.name}: a ref takes its value from the row")


@dataclass(frozen=True, slots=True)
class ServiceDescriptor:
    """A RESOURCE type="meta" utype="adhoc:service" referenced by service_def rows."""

    xml_id: str
    access_url: str
    input_params: tuple[InputParam, ...]
    standard_id: str | None = None
    name: str | None = None
    description: str = ""
    content_type: str | None = None
    example_url: str | None = None


def soda_input_params(header: Mapping[str, Any] | None) -> tuple[InputParam, ...]:
    """The SODA cutout parameters (not ID) with VALUES limits from an image header's WCS.

    All are for the user to fill in (value=""); the descriptor builders add ID, fixed to the
    dataset. Without a header (no image) the parameters come without limits.
    """
    limits = param_limits_from_wcs(header) if header is not None else {}
    out = []
    for spec in SODA_PARAMETERS:
        if spec.name == "ID":
            continue
        low, high = limits.get(spec.name, (None, None))
        pol = pol_options(header) if spec.name == "POL" and header is not None else ()
        out.append(
            InputParam(
                spec.name,
                datatype=spec.datatype,
                arraysize=spec.arraysize,
                ucd=spec.ucd,
                unit=spec.unit,
                xtype=spec.xtype,
                description=spec.description,
                minimum=None if low is None else format_limit(low),
                maximum=None if high is None else format_limit(high),
                options=tuple((state, state) for state in pol),
            )
        )
    return tuple(out)


def _e(tag: str, **attrib: str | None) -> etree._Element:
    return etree.Element(f"{{{VOTABLE_NS}}}{tag}", {k: v for k, v in attrib.items() if v})


def _text(value: object) -> str:
    """A value in VOTable's text form: numbers plainly, booleans T/F, arrays space-separated."""
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"limits must be finite, not {value}")
        return repr(value)
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Iterable):
        return " ".join(_text(v) for v in value)
    raise TypeError(f"cannot write {value!r} into a VOTable attribute")


def _param(p: InputParam) -> etree._Element:
    arraysize = p.arraysize
    if arraysize is None and p.datatype in ("char", "unicodeChar"):
        arraysize = "*"
    element = _e(
        "PARAM",
        name=p.name,
        datatype=p.datatype,
        arraysize=arraysize,
        ucd=p.ucd,
        unit=p.unit,
        xtype=p.xtype,
        ref=p.ref,
    )
    element.set("value", xml_safe(p.value))  # VOTable requires it: "" when not fixed
    if p.description:
        _e_sub(element, "DESCRIPTION").text = xml_safe(p.description)
    if p.minimum is not None or p.maximum is not None or p.options:
        values = _e_sub(element, "VALUES")
        if p.minimum is not None:
            _e_sub(values, "MIN").set("value", _text(p.minimum))
        if p.maximum is not None:
            _e_sub(values, "MAX").set("value", _text(p.maximum))
        for label, value in p.options:
            option = _e_sub(values, "OPTION")
            option.set("name", xml_safe(label))
            option.set("value", xml_safe(value))
    return element


def _e_sub(parent: etree._Element, tag: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{VOTABLE_NS}}}{tag}")


def _char_param(name: str, value: str) -> etree._Element:
    return _e("PARAM", name=name, datatype="char", arraysize="*", value=xml_safe(value))


def descriptor_element(descriptor: ServiceDescriptor) -> etree._Element:
    """RESOURCE type="meta" utype="adhoc:service" (DataLink 1.1 section 4)."""
    resource = _e(
        "RESOURCE",
        ID=descriptor.xml_id,
        name=descriptor.name,
        type="meta",
        utype="adhoc:service",
    )
    if descriptor.description:
        _e_sub(resource, "DESCRIPTION").text = xml_safe(descriptor.description)
    if descriptor.standard_id:
        resource.append(_char_param("standardID", descriptor.standard_id))
    resource.append(_char_param("accessURL", descriptor.access_url))
    if descriptor.content_type:
        resource.append(_char_param("contentType", descriptor.content_type))
    if descriptor.example_url:
        resource.append(_char_param("exampleURL", descriptor.example_url))
    group = _e_sub(resource, "GROUP")
    group.set("name", "inputParams")
    for p in descriptor.input_params:
        group.append(_param(p))
    return resource


def append_descriptors(document: bytes, descriptors: Sequence[ServiceDescriptor]) -> bytes:
    """``document`` (a VOTable) with the descriptors' RESOURCEs added at its end, without
    parsing it again: a table of 100,000 rows costs nothing more to extend."""
    end = document.rindex(b"</VOTABLE>")
    holder = etree.Element(f"{{{VOTABLE_NS}}}VOTABLE", nsmap={None: VOTABLE_NS})
    added = []
    for descriptor in descriptors:
        element = descriptor_element(descriptor)
        holder.append(element)
        etree.indent(element, space=" ", level=1)
        added.append(b" " + etree.tostring(element, encoding="utf-8") + b"\n")
    return document[:end] + b"".join(added) + document[end:]


# ----------------------------------------------------------------------------- SODA


def id_param(ref: str, *, datatype: str = "char") -> InputParam:
    """ID, from the row's ID column (``ref``: that FIELD's XML ID)."""
    return InputParam(
        "ID",
        datatype=datatype,
        ref=ref,
        ucd="meta.id;meta.main",
        description="Identifier of the dataset, from the ID column of the row.",
    )


def raw_target_param() -> InputParam:
    """TARGET fixed to raw: the raw frame as archived, no reduction."""
    return InputParam(
        "TARGET",
        value=RAW_TARGET,
        ucd="meta.code",
        description=f"{RAW_TARGET}: the frame as archived, without reduction (fixed).",
    )


def reduce_descriptor(
    xml_id: str,
    access_url: str,
    *,
    id_ref: str,
    targets: Sequence[str],
    default_target: str,
    recipe: Sequence[InputParam],
    header: Mapping[str, Any] | None,
    what: str,
) -> ServiceDescriptor:
    """SODA async: reduce one raw file (ID from the row) for a TARGET, and cut the products.

    Only ID is given; TARGET and the recipe parameters are the user's, their defaults
    applied by the service when left empty.
    """
    options = (*((t, t) for t in targets), (f"{RAW_TARGET} (no reduction)", RAW_TARGET))
    inputs = (
        id_param(id_ref),
        InputParam(
            "TARGET",
            ucd="meta.code",
            description=f"Pipeline task whose products are wanted (default {default_target}); "
            "the tasks it needs upstream run as well, each step only once for all users. "
            "raw: no reduction, the cutouts of the frame as archived.",
            options=options,
        ),
        *recipe,
        *soda_input_params(header),
    )
    return ServiceDescriptor(
        xml_id=xml_id,
        access_url=access_url,
        input_params=inputs,
        standard_id=SODA_ASYNC_ID,
        name=xml_id,  # names must be unique in the document (votlint)
        description=(
            f"Reduce {what} on demand: POST these parameters to create a UWS 1.1 job, then "
            "PHASE=RUN; the planner picks the calibrations. Parameters left empty take "
            "their defaults. Cutout parameters (POS, CIRCLE, POLYGON, BAND, TIME, POL) cut "
            "the target products."
        ),
        content_type="text/xml",
    )


def cutout_descriptor(
    xml_id: str,
    access_url: str,
    identifier: str,
    *,
    id_ref: str,
    header: Mapping[str, Any] | None,
    what: str,
    fixed: Sequence[InputParam] = (),
    id_datatype: str = "char",
) -> ServiceDescriptor:
    """SODA sync: a cutout of one image (ID from the row), limits from its WCS.

    ``fixed``: parameters sent unchanged (TARGET=raw for a raw frame as archived);
    ``identifier`` is the dataset the exampleURL cuts (none without one); ``id_datatype``
    that of the ID column.
    """
    inputs = (
        id_param(id_ref, datatype=id_datatype),
        *fixed,
        *soda_input_params(header),
    )
    example = None
    circle = next((p.maximum for p in inputs if p.name == "CIRCLE"), None)
    if isinstance(circle, str) and identifier:  # the image's central half: an answer exists
        ra, dec, radius = (float(v) for v in circle.split())
        query = {"ID": identifier, **{p.name: p.value for p in fixed}}
        query["CIRCLE"] = format_limit((ra, dec, radius / 2))
        example = f"{access_url}?{urlencode(query)}"
    return ServiceDescriptor(
        xml_id=xml_id,
        access_url=access_url,
        input_params=inputs,
        standard_id=SODA_SYNC_ID,
        name=xml_id,
        description=(
            f"Cut out part of {what} (SODA 1.0 sync): the answer is a FITS file with a correct "
            "WCS; a polygon gives its bounding box with the outside masked; no overlap gives "
            "HTTP 204."
        ),
        content_type="application/fits",
        example_url=example,
    )
