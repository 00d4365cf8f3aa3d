"""Links between the pages (host-relative unless a public root is configured).

One place for the page URL scheme (docs/pages.md): a raw file's page is ``/raw/PATH``, a
product's page ``/products/STEP_KEY/FILE/page`` beside the file itself
(``/products/STEP_KEY/FILE``, web/products.py: a file name never holds a slash, so the
two never collide), DataLink ``/datalink?ID=...``.
"""

from __future__ import annotations

from urllib.parse import quote

from soda_reduce.web.context import PRODUCTS_PATH

PRODUCT_PAGE = "page"  # the last segment of a product page's URL


def raw_page_url(root: str, path: str) -> str:
    return f"{root}/raw/{quote(path)}"


def product_file_url(root: str, step_key: str, file: str) -> str:
    return f"{root}{PRODUCTS_PATH}/{step_key}/{quote(file)}"


def product_page_url(root: str, step_key: str, file: str) -> str:
    return f"{product_file_url(root, step_key, file)}/{PRODUCT_PAGE}"


def datalink_url(root: str, identifier: str) -> str:
    return f"{root}/datalink?ID={quote(identifier, safe='')}"


def job_page_url(root: str, job_id: str) -> str:
    return f"{root}/jobs/{quote(job_id)}"
