"""The one XML parser kvmhooks uses: no DTDs, no entities, no network, bounded size.

Domain XML reaches us from anyone allowed to define domains, so the parser never
resolves entities nor reads a file or URL, and refuses a document with a DOCTYPE.
"""

from __future__ import annotations

from lxml import etree

MAX_XML_BYTES = 2 * 1024 * 1024


class UnsafeXml(ValueError):
    """The document is not acceptable; str() says why, in a few words."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_blank_text=False)


def parse(data: bytes | str) -> etree._Element:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_XML_BYTES:
        raise UnsafeXml(f"XML is {len(data)} bytes, over the limit of {MAX_XML_BYTES}")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise UnsafeXml("XML with a DOCTYPE or entity declarations is refused")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as error:
        message = " ".join(str(error.msg).split())
        raise UnsafeXml(f"malformed XML: {message} (line {error.lineno})") from None
    if root is None:
        raise UnsafeXml("empty XML document")
    # The byte check above misses other encodings (UTF-16); the parsed tree does not.
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise UnsafeXml("XML with a DOCTYPE or entity declarations is refused")
    return root


def serialize(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")
