"""`bench.chaos_fleet.write_bench_topology`: the shipped shape on free ports, fault switches
off unless the soak asks for them (its fill stream sets the backend's Cache-Control)."""

from __future__ import annotations

from pathlib import Path

from bench.chaos_fleet import topology_ports, write_bench_topology
from topology.load import load_fleet


def test_the_bench_topology_moves_every_port_and_keeps_switches_off(tmp_path: Path) -> None:
    layout = write_bench_topology(tmp_path)
    shipped = load_fleet(Path(__file__).resolve().parents[2] / "topology" / "fleet.yaml")
    written = load_fleet(layout.topology_path)
    assert not written.backends.test_faults
    assert set(topology_ports(written)).isdisjoint(topology_ports(shipped))
    assert len(written.backends.ports) == len(shipped.backends.ports)


def test_the_soak_turns_the_backends_switches_on(tmp_path: Path) -> None:
    layout = write_bench_topology(tmp_path, test_faults=True)
    assert load_fleet(layout.topology_path).backends.test_faults
