#if os(Linux)
import TetherHTTP
import TetherAuth
import TetherIO

/// One session as the admin API shows it. Ids only: the user id stays in the audit log.
struct SessionSummary: Sendable {
    struct BridgeSummary: Sendable {
        let protocolName: String
        let address: String
        let streams: Int
    }

    let id: String
    let tier: String
    let state: String
    let bridges: [BridgeSummary]
    let streams: Int
    let requests: UInt64
    let bytesUp: UInt64
    let bytesDown: UInt64
    let idleSeconds: Double
    let createdAt: Double
    let worker: Int

    init(_ session: Session, context: RelayContext) {
        id = session.id.hex
        tier = session.tierName
        state = session.state == .active ? "active" : "parked"
        bridges = session.bridges.map {
            BridgeSummary(protocolName: $0.protocolKind.label, address: $0.remoteAddress?.description ?? "",
                          streams: $0.activeStreams)
        }
        streams = session.activeStreams
        requests = session.requestCount
        bytesUp = session.bytesUp
        bytesDown = session.bytesDown
        let now = context.loop.nowMilliseconds
        idleSeconds = Double(now &- min(session.lastActivity, now)) / 1000
        createdAt = session.createdAt
        worker = context.loop.index
    }

    func json(detailed: Bool) -> String {
        var out = "{\"id\":\"\(id)\",\"tier\":\(JSONString.quote(tier)),\"state\":\"\(state)\",\"bridges\":\(bridges.count),"
            + "\"streams\":\(streams),\"requests\":\(requests),\"bytes_up\":\(bytesUp),\"bytes_down\":\(bytesDown),"
            + "\"idle_seconds\":\(JSONNumber.format(idleSeconds)),\"created_at\":\"\(AuditLog.timestamp(createdAt))\""
        if detailed {
            out += ",\"worker\":\(worker),\"bridge_list\":["
            for (i, bridge) in bridges.enumerated() {
                if i > 0 { out += "," }
                out += "{\"protocol\":\(JSONString.quote(bridge.protocolName)),\"address\":\(JSONString.quote(bridge.address)),"
                    + "\"streams\":\(bridge.streams)}"
            }
            out += "]"
        }
        return out + "}"
    }
}

enum JSONNumber {
    /// Three decimals: idle times and the like, never NaN or infinite here.
    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "0" }
        let millis = (value * 1000).rounded()
        let whole = Int64(millis) / 1000
        let frac = abs(Int64(millis) % 1000)
        let fracText = String(frac)
        return "\(millis < 0 && whole == 0 ? "-" : "")\(whole).\(String(repeating: "0", count: 3 - fracText.count))\(fracText)"
    }
}

extension RelayContext {
    /// DELETE /admin/sessions/<id>, on the session's home worker: closes its bridges (close
    /// 4010; they may reconnect), which fails its streams, then removes it.
    func kickSession(_ id: SessionID) -> (bridges: Int, streams: Int)? {
        guard let session = sessions.existing(id) else { return nil }
        let bridges = session.bridges
        let streams = session.activeStreams
        for bridge in bridges {
            bridge.close(code: 4010, reason: "SESSION_REMOVED: removed by the operator", kind: .kicked)
        }
        audit.record("admin_session_removed", ["session": .string(id.hex), "bridges": .int(bridges.count),
                                               "streams": .int(streams)])
        removeSession(session, reason: .kicked)
        return (bridges.count, streams)
    }
}
#endif
