import Testing
@testable import TetherTunnel
@Test func placeholder() { #expect(TunnelProtocol.subprotocol == "tether.v1") }
