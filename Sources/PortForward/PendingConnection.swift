import CLinuxShim
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A connection whose protocol is not known yet: reads its first bytes, hands them to the
/// `Handshake`, and does what it decides (answer, refuse, or start a session).
final class PendingConnection: CompletionHandler {
    let fd: FileDescriptor
    let peer: String
    unowned let relay: Relay
    private var handshake: Handshake
    private var timer: TimerID = 0
    private var done = false

    init(fd: FileDescriptor, peer: String, relay: Relay) {
        self.fd = fd
        self.peer = peer
        self.relay = relay
        handshake = Handshake(limits: Handshake.Limits(maxHead: relay.limits.maxRequestHead,
                                                       maxBody: relay.limits.maxUpgradeBody(relay.settings)),
                              resolve: { [unowned relay] target in
            if case .refused(let refusal) = relay.resolve(target) { return refusal }
            return nil
        })
    }

    func start() {
        timer = relay.reactor.timer(nanoseconds: UInt64(relay.limits.handshakeTimeout * 1e9), handler: self, tag: 1)
        receive()
    }

    private func receive() { relay.reactor.receive(fd, handler: self, tag: 0) }

    func complete(_ completion: Completion) {
        if done {
            if completion.buffer != BufferPool.none { relay.reactor.buffers.release(completion.buffer) }
            return
        }
        if completion.tag == 1 {
            return act(handshake.timedOut(after: relay.limits.handshakeTimeout))
        }
        guard completion.result > 0 else {
            finish()
            relay.reactor.close(fd)
            return
        }
        let pool = relay.reactor.buffers
        let decision = handshake.receive(UnsafeRawBufferPointer(start: pool.pointer(completion.buffer), count: Int(completion.result)))
        pool.release(completion.buffer)
        act(decision)
    }

    private func act(_ decision: Handshake.Decision) {
        switch decision {
        case .needMore:
            receive()
        case .sendContinue:
            guard writeAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return refuse(.badRequest("write failed")) }
            receive()
        case .refuse(let refusal):
            refuse(refusal)
        case .priorKnowledge(let initial):
            become(upgrade: nil, initial: initial)
        case .upgrade(let upgrade, let initial):
            become(upgrade: upgrade, initial: initial)
        }
    }

    private func finish() {
        done = true
        relay.reactor.cancelTimer(timer)
        relay.handshakeDone(self)
    }

    private func become(upgrade: Handshake.Upgrade?, initial: ArraySlice<UInt8>) {
        let session: RelaySession
        do {
            session = try RelaySession(fd: fd, peer: peer, relay: relay)
        } catch {
            finish()
            relay.limitedLog("session: \(error)")
            relay.reactor.close(fd)
            return
        }
        if let upgrade, case .h2c(let settings) = upgrade.frontEnd {
            let request = upgrade.request
            // The settings are checked before the answer: a payload nghttp2 refuses is a 400,
            // and nothing is upgraded.
            do {
                try session.connection.session.upgrade(settingsPayload: settings, headRequest: request.method == "HEAD")
            } catch {
                return refuse(.invalidSettings("\(error)"))
            }
            guard writeAll(Array(HTTPText.switchingProtocols.utf8)) else {
                finish()
                relay.reactor.close(fd)
                return
            }
            finish()
            relay.adopt(session)
            var headers = HeaderList([(":method", request.method), (":path", request.target)])
            for port in request.fields.all("port") { headers.fields.append(("port", port)) }
            session.upgraded(headers: headers, body: upgrade.body)
        } else {
            finish()
            relay.adopt(session)
        }
        initial.withUnsafeBytes { session.connection.start(initial: $0) }
    }

    private func refuse(_ refusal: Refusal) {
        finish()
        relay.limitedLog("request from \(peer) refused with \(refusal.status): \(refusal.text)")
        _ = writeAll(Array(HTTPText.response(status: refusal.status, reason: refusal.reasonPhrase, body: refusal.text).utf8))
        // Unread request bytes would turn the close into a reset that loses the answer.
        Sockets.shutdownWrite(fd)
        relay.reactor.close(fd)
    }

    /// A few hundred bytes on a fresh socket: the kernel takes them at once.
    private func writeAll(_ data: [UInt8]) -> Bool {
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written <= 0 { return false }
                offset += written
            }
            return true
        }
    }
}
