"""Settings round trip: each field set, loaded into msquic, and read back with GetParam.

Configuration.read_settings() asks msquic itself (QUIC_PARAM_CONFIGURATION_SETTINGS),
so these tests see what msquic will use, not what pymsquic remembers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import pytest
from test_transport_settings import NEW_SETTINGS

import pymsquic
from pymsquic import Configuration, Credential, QuicError, Registration, Settings
from pymsquic._msquic import lib

ALPN = "pymsquic-settings"

# msquic 2.5.1's defaults for a configuration that sets nothing: QuicSettingsSetDefault
# in src/core/settings.c with the values of src/core/quicdef.h. Literal numbers on
# purpose: they are what a caller gets, so a change in msquic shows up here.
MSQUIC_DEFAULTS: dict[str, Any] = {
    "idle_timeout_ms": 30_000,                 # QUIC_DEFAULT_IDLE_TIMEOUT
    "handshake_idle_timeout_ms": 10_000,       # QUIC_DEFAULT_HANDSHAKE_IDLE_TIMEOUT
    "peer_bidi_stream_count": 0,               # peers cannot open streams unless set
    "peer_unidi_stream_count": 0,
    "keep_alive_interval_ms": 0,               # QUIC_DEFAULT_KEEP_ALIVE_INTERVAL: off
    "datagram_receive_enabled": False,         # QUIC_DEFAULT_DATAGRAM_RECEIVE_ENABLED
    "disconnect_timeout_ms": 16_000,           # QUIC_DEFAULT_DISCONNECT_TIMEOUT
    "stream_recv_window_default": 0x10000,     # QUIC_DEFAULT_STREAM_FC_WINDOW_SIZE
    "conn_flow_control_window": 0x1000000,     # QUIC_DEFAULT_CONN_FLOW_CONTROL_WINDOW (16 MiB)
    "max_ack_delay_ms": 25,                    # QUIC_TP_MAX_ACK_DELAY_DEFAULT
    "initial_rtt_ms": 333,                     # QUIC_INITIAL_RTT
    "congestion_control": "cubic",             # QUIC_CONGESTION_CONTROL_ALGORITHM_DEFAULT
    "send_buffering_enabled": True,            # QUIC_DEFAULT_SEND_BUFFERING_ENABLE
    "pacing_enabled": True,                    # QUIC_DEFAULT_SEND_PACING
    "migration_enabled": True,                 # QUIC_DEFAULT_MIGRATION_ENABLED
    "server_resumption_level": 0,              # QUIC_DEFAULT_SERVER_RESUMPTION_LEVEL (no resume)
    "versions": None,                          # no QUIC_VERSION_SETTINGS: msquic's default list
    # Transport settings (issue 10; tests/test_transport_settings.py has more).
    "ecn_enabled": False,                      # QUIC_DEFAULT_ECN_ENABLED
    "initial_window_packets": 10,              # QUIC_INITIAL_WINDOW_PACKETS
    "send_idle_timeout_ms": 1000,              # QUIC_DEFAULT_SEND_IDLE_TIMEOUT_MS
    "minimum_mtu": 1288,                       # QUIC_DPLPMTUD_DEFAULT_MIN_MTU
    "maximum_mtu": 1500,                       # QUIC_DPLPMTUD_DEFAULT_MAX_MTU
    "mtu_discovery_search_complete_timeout_us": 600_000_000,
    "mtu_discovery_missing_probe_count": 3,    # QUIC_DPLPMTUD_MAX_PROBES
    "max_bytes_per_key": 0x4000000000,         # QUIC_DEFAULT_MAX_BYTES_PER_KEY
    "dest_cid_update_idle_timeout_ms": 20_000,
    "grease_quic_bit_enabled": False,
    "stream_recv_buffer_default": 4096,        # QUIC_DEFAULT_STREAM_RECV_BUFFER_SIZE
    "stream_recv_window_bidi_local_default": 0x10000,  # follow stream_recv_window_default
    "stream_recv_window_bidi_remote_default": 0x10000,
    "stream_recv_window_unidi_default": 0x10000,
    # QUIC_MAX_TLS_SERVER_SEND_BUFFER: msquic 2.5.1's QuicSettingsSetDefault sets the
    # client field twice, the second time with the server's value.
    "tls_client_max_send_buffer": 8192,
}

# One value per msquic-backed field that msquic accepts and that differs from its
# default (checked below), so reading back the default cannot pass for a round trip.
NON_DEFAULT: dict[str, Any] = {
    "idle_timeout_ms": 12_345,
    "handshake_idle_timeout_ms": 4_321,
    "peer_bidi_stream_count": 17,
    "peer_unidi_stream_count": 9,
    "keep_alive_interval_ms": 1_500,
    "datagram_receive_enabled": True,
    "disconnect_timeout_ms": 7_000,
    "stream_recv_window_default": 1 << 20,     # msquic wants a power of two
    "conn_flow_control_window": 3_000_000,
    "max_ack_delay_ms": 40,
    "initial_rtt_ms": 100,
    "congestion_control": "bbr",
    "send_buffering_enabled": False,
    "pacing_enabled": False,
    "migration_enabled": False,
    "server_resumption_level": 2,              # QUIC_SERVER_RESUME_AND_ZERORTT
    "versions": (pymsquic.QUIC_V2, pymsquic.QUIC_V1),  # QUIC_PARAM_CONFIGURATION_VERSION_SETTINGS
    **NEW_SETTINGS,  # the transport settings of issue 10, one value each
}

# pymsquic's own fields: not msquic configuration settings, so GetParam cannot
# report them and read_settings() leaves them None.
# stream_scheduling is applied to each connection (QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME).
PYMSQUIC_ONLY: dict[str, Any] = {
    "stream_scheduling": "fifo",
}

# msquic reports every msquic-backed Settings field (QuicSettingsGetSettings copies
# all of them with their IsSet bits): none is refused, so this stays empty.
MSQUIC_REFUSES_TO_REPORT: set[str] = set()

ALL_FIELDS = [field.name for field in dataclasses.fields(Settings)]


@pytest.fixture
def registration() -> Iterator[Registration]:
    with Registration("pymsquic-settings-tests") as reg:
        yield reg


def configure(registration: Registration, settings: Settings) -> Configuration:
    # A client credential needs no certificate; settings do not depend on the side.
    return Configuration(registration, ALPN, Credential.client(verify=False), settings)


def test_field_lists_match_settings() -> None:
    """Every Settings field is either read back from msquic or declared pymsquic-only."""
    assert set(NON_DEFAULT) == set(MSQUIC_DEFAULTS)
    assert set(NON_DEFAULT).isdisjoint(PYMSQUIC_ONLY)
    assert set(ALL_FIELDS) == set(NON_DEFAULT) | set(PYMSQUIC_ONLY)
    assert not MSQUIC_REFUSES_TO_REPORT


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_field_round_trips_through_msquic(registration: Registration, name: str) -> None:
    if name in PYMSQUIC_ONLY:
        value = PYMSQUIC_ONLY[name]
        with configure(registration, Settings(**{name: value})) as conf:
            assert getattr(conf.read_settings(), name) is None
            assert conf.read_settings(only_set=True) == Settings()
            assert getattr(conf.settings, name) == value  # kept by pymsquic, not msquic
        return
    if name not in NON_DEFAULT:
        pytest.fail(f"Settings.{name} has no readback test: add it to NON_DEFAULT (msquic reports it) "
                    "or PYMSQUIC_ONLY (msquic does not)")
    value = NON_DEFAULT[name]
    assert value != MSQUIC_DEFAULTS[name]
    with configure(registration, Settings(**{name: value})) as conf:
        seen = conf.read_settings()
        assert getattr(seen, name) == value
        # The other fields keep msquic's defaults: setting one touches no other,
        # except that msquic's QuicSettingApply, run for the version list
        # (QUIC_PARAM_CONFIGURATION_VERSION_SETTINGS), recomputes an unset
        # minimum_mtu from the floor (1248, QUIC_DPLPMTUD_MIN_MTU), the value every
        # connection gets anyway (test_connections_use_their_configurations_settings).
        expected = {**MSQUIC_DEFAULTS, name: value}
        if name == "versions":
            expected["minimum_mtu"] = 1248
        assert seen == Settings(**expected)
        # msquic's IsSet bits name exactly this field.
        assert conf.read_settings(only_set=True) == Settings(**{name: value})


def test_unset_fields_read_back_as_msquic_defaults(registration: Registration) -> None:
    with configure(registration, Settings()) as conf:
        assert conf.read_settings() == Settings(**MSQUIC_DEFAULTS)
        assert conf.read_settings(only_set=True) == Settings()


def test_default_values_set_explicitly_are_reported_as_set(registration: Registration) -> None:
    # Setting a field to msquic's default is not the same as leaving it unset:
    # msquic's IsSet bit says which one the application did.
    with configure(registration, Settings(**MSQUIC_DEFAULTS)) as conf:
        assert conf.read_settings(only_set=True) == Settings(**MSQUIC_DEFAULTS)


def test_all_fields_at_once(registration: Registration) -> None:
    settings = Settings(**NON_DEFAULT, **PYMSQUIC_ONLY)
    with configure(registration, settings) as conf:
        pymsquic_only_cleared = dataclasses.replace(settings, **{name: None for name in PYMSQUIC_ONLY})
        assert conf.read_settings() == pymsquic_only_cleared
        assert conf.read_settings(only_set=True) == pymsquic_only_cleared


def test_largest_values_round_trip(registration: Registration) -> None:
    # The upper bounds Settings allows are the ones msquic accepts and reports unchanged.
    settings = Settings(idle_timeout_ms=2**62 - 1, handshake_idle_timeout_ms=2**62 - 1,
                        keep_alive_interval_ms=2**32 - 1, disconnect_timeout_ms=600_000,
                        stream_recv_window_default=2**31, conn_flow_control_window=2**32 - 1,
                        max_ack_delay_ms=2**14 - 1, initial_rtt_ms=2**32 - 1,
                        peer_bidi_stream_count=2**16 - 1, peer_unidi_stream_count=2**16 - 1)
    with configure(registration, settings) as conf:
        assert conf.read_settings(only_set=True) == settings


@pytest.mark.parametrize("bad", [
    {"stream_recv_window_default": 3_000},  # not a power of two
    {"initial_rtt_ms": 0},
    {"disconnect_timeout_ms": 0},
])
def test_values_msquic_refuses_raise(registration: Registration, bad: dict[str, int]) -> None:
    # Settings accepts these (they are in range); msquic refuses the configuration.
    with pytest.raises(QuicError) as caught:
        configure(registration, Settings(**bad))
    assert caught.value.status == lib.QUIC_STATUS_INVALID_PARAMETER


def test_read_settings_of_a_closed_configuration_raises(registration: Registration) -> None:
    conf = configure(registration, Settings(idle_timeout_ms=1_000))
    conf.close()
    with pytest.raises(QuicError, match="closed"):
        conf.read_settings()



def test_connections_use_their_configurations_settings(registration: Registration) -> None:
    # Each side's connection takes msquic's copy of its own configuration's
    # settings: what read_settings() shows is what a connection runs with.
    server_settings = Settings(idle_timeout_ms=12_345, peer_bidi_stream_count=5, datagram_receive_enabled=True)
    client_settings = Settings(keep_alive_interval_ms=1_500, initial_rtt_ms=100, congestion_control="bbr")
    with Configuration(registration, ALPN, Credential.self_signed(), server_settings) as server_config, \
            configure(registration, client_settings) as client_config, \
            pymsquic.sync.Listener(registration, server_config) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        with pymsquic.sync.connect("127.0.0.1", listener.local_address[1], configuration=client_config) as client:
            server = listener.accept(timeout=10)
            try:
                assert client.read_settings(only_set=True) == client_settings
                # Unset, minimum_mtu differs: msquic gives a connection the floor (1248,
                # QUIC_DPLPMTUD_MIN_MTU) where the configuration reports its default 1288.
                floor = {"minimum_mtu": 1248}
                assert client.read_settings() == dataclasses.replace(client_config.read_settings(), **floor)
                assert server.read_settings(only_set=True) == server_settings
                assert server.read_settings() == dataclasses.replace(server_config.read_settings(), **floor)
                client.shutdown(0)
                client.wait_closed(timeout=10)
                # The handle is gone once closed: a clear error, not a use after free.
                with pytest.raises(pymsquic.ConnectionClosed):
                    client.read_settings()
                server.wait_closed(timeout=10)
            finally:
                server._abandon()
