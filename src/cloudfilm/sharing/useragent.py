"""A short, plain description of a browser from its User-Agent header ("WeChat · Android").

Only for the patient's "who opened my images" list: a hint, not an identification.
"""

from __future__ import annotations

#: (substring, name), first match wins; in-app browsers before the engines they embed.
_APPS = (
    ("MicroMessenger", "WeChat"),
    ("AlipayClient", "Alipay"),
    ("DingTalk", "DingTalk"),
    ("QQ/", "QQ"),
    ("Edg/", "Edge"),
    ("HeadlessChrome", "Chrome (automated)"),
    ("Chrome/", "Chrome"),
    ("CriOS/", "Chrome"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("Safari/", "Safari"),
    ("python-requests", "a program"),
    ("python-httpx", "a program"),
    ("curl/", "a program"),
)
_SYSTEMS = (
    ("HarmonyOS", "HarmonyOS"),
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Windows", "Windows"),
    ("Mac OS X", "Mac"),
    ("Linux", "Linux"),
)


def describe_agent(user_agent: str) -> str:
    """``"WeChat · Android"``, ``"Chrome · Windows"``, ``"Safari"``; '' when nothing is known."""
    app = next((name for key, name in _APPS if key in user_agent), "")
    system = next((name for key, name in _SYSTEMS if key in user_agent), "")
    return " · ".join(part for part in (app, system) if part)
