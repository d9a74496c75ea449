"""The private core under both worlds: each class here holds a native object's
state and every step that never waits; :mod:`pymsquic.asyncio` and
:mod:`pymsquic.sync` subclass them and add only the waiting."""
