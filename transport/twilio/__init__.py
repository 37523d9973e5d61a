"""Twilio Media Streams: a phone call to a voice chain.

A TwiML ``<Connect><Stream url="wss://HOST/twilio">`` (README, "Voice clients") makes
Twilio open a websocket to ``/twilio`` and stream the call's audio both ways; the
``chain`` and ``token`` ``<Parameter>``s pick the chain and authorise the call
(``?token=`` in the URL works too). call.py serves it.
"""

from __future__ import annotations

from transport.twilio.call import Call, TwilioOptions, serve

__all__ = ["Call", "TwilioOptions", "serve"]
