"""The IVOA schemas and tools the conformance tests need, and what happens without them.

Without a schema folder or STILTS a test is skipped on a developer's machine, but fails
when ``CI`` is set: a CI run that silently validated nothing would be a lie.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lxml import etree

from tests.support.tools import missing

SHARED_SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "vo_schemas"
OUR_SCHEMAS = Path(__file__).resolve().parents[2] / "vo_schemas"

# namespace -> file, for every schema an OAI-PMH answer of a registry can touch
REGISTRY_SCHEMAS = {
    "http://www.openarchives.org/OAI/2.0/": "OAI-PMH-v2.0.xsd",
    "http://www.openarchives.org/OAI/2.0/oai_dc/": "oai_dc-v2.0.xsd",
    "http://purl.org/dc/elements/1.1/": "simpledc20021212.xsd",
    "http://www.ivoa.net/xml/RegistryInterface/v1.0": "RegistryInterface-v1.0.xsd",
    "http://www.ivoa.net/xml/VOResource/v1.0": "VOResource-v1.1.xsd",
    "http://www.ivoa.net/xml/VODataService/v1.1": "VODataService-v1.2.xsd",
    "http://www.ivoa.net/xml/VORegistry/v1.0": "VORegistry-v1.1.xsd",
    "http://www.ivoa.net/xml/STC/stc-v1.30.xsd": "stc-v1.30.xsd",
    "http://www.w3.org/1999/xlink": "xlink.xsd",
}


def shared_schema(name: str) -> Path:
    path = SHARED_SCHEMAS / name
    if not path.is_file():
        missing(f"IVOA schema {name} not found in {SHARED_SCHEMAS}")
    return path


class OfflineResolver(etree.Resolver):
    """Every schema location the registry schemas import, mapped to the local copies;
    anything else on the network is refused, never fetched."""

    LOCATIONS: ClassVar[dict[str, str]] = {
        "http://www.ivoa.net/xml/Xlink/xlink.xsd": "xlink.xsd",
        "http://www.ivoa.net/xml/VOResource/v1.0": "VOResource-v1.1.xsd",
        "http://www.ivoa.net/xml/VODataService/v1.1": "VODataService-v1.2.xsd",
        "http://docs.g-vo.org/schemata/VOResource.xsd": "VOResource-v1.1.xsd",
        "http://docs.g-vo.org/schemata/VODataService.xsd": "VODataService-v1.2.xsd",
        "http://docs.g-vo.org/schemata/xlink.xsd": "xlink.xsd",
        "http://vo.ari.uni-heidelberg.de/docs/schemata/xlink.xsd": "xlink.xsd",
        "http://vo.ari.uni-heidelberg.de/docs/schemata/stc.xsd": "stc-v1.30.xsd",
        "http://vo.ari.uni-heidelberg.de/docs/schemata/simpledc20021212.xsd": (
            "simpledc20021212.xsd"
        ),
        "http://dublincore.org/schemas/xmls/simpledc20021212.xsd": "simpledc20021212.xsd",
        "http://www.w3.org/2001/xml.xsd": "xml.xsd",
        **REGISTRY_SCHEMAS,
    }

    def resolve(self, url, pubid, context):  # type: ignore[no-untyped-def]
        if url in self.LOCATIONS:
            return self.resolve_filename(str(SHARED_SCHEMAS / self.LOCATIONS[url]), context)
        if "://" in url and not url.startswith("file:"):
            raise OSError(f"refusing network fetch of {url}")
        return None


_CACHE: dict[str, etree.XMLSchema] = {}


def registry_schema() -> etree.XMLSchema:
    """One lxml schema importing OAI-PMH, oai_dc, RegistryInterface, VOResource 1.1,
    VODataService 1.2 and VORegistry 1.1, so the records inside OAI-PMH's strict
    ``xs:any`` and their ``xsi:type``s are checked too."""
    if "registry" not in _CACHE:
        for name in {*REGISTRY_SCHEMAS.values(), "xml.xsd"}:
            shared_schema(name)
        imports = "".join(
            f'<xs:import namespace="{ns}" schemaLocation="{SHARED_SCHEMAS / name}"/>'
            for ns, name in REGISTRY_SCHEMAS.items()
        )
        driver = (
            '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
            f'targetNamespace="urn:soda-reduce:tests:driver">{imports}</xs:schema>'
        )
        parser = etree.XMLParser(no_network=True, resolve_entities=False)
        parser.resolvers.add(OfflineResolver())
        doc = etree.fromstring(driver.encode(), parser, base_url=str(SHARED_SCHEMAS) + "/")
        _CACHE["registry"] = etree.XMLSchema(doc.getroottree())
    return _CACHE["registry"]


def assert_valid(schema: etree.XMLSchema, doc: etree._Element, what: str = "") -> None:
    assert schema.validate(doc), f"{what}:\n" + "\n".join(str(e) for e in schema.error_log)
