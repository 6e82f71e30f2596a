// Placeholder until the tunnel codec lands.
public enum TunnelProtocol { public static let subprotocol = "tether.v1" }
