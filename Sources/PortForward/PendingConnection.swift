import CLinuxShim
import HTTP2
import Reactor
import WebSocket
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A connection whose protocol is not known yet: reads its first bytes, hands them to the
/// `Handshake`, and does what it decides (answer, refuse, or start a session). A connection
/// that makes Kubernetes API requests stays here, one request at a time, until it upgrades,
/// closes, or reaches `--max-api-requests`.
final class PendingConnection: CompletionHandler {
    let fd: FileDescriptor
    let peer: String
    /// The client certificate's identity (a TLS connection that showed one), else nil.
    let identity: Identity?
    unowned let relay: Relay
    private var handshake: Handshake
    private var timer: TimerID = 0
    private var done = false
    /// An API answer being written, and how much of it is written. Freed when the write is
    /// done, or, if the connection closes first, when the reactor says no cancelled write can
    /// read it any more.
    private var answer: UnsafeMutableRawBufferPointer?
    private var answerWritten = 0
    private var keepAlive = false
    private var firstBytes = true

    private enum Tag: UInt32 { case receive = 0, timer = 1, write = 2 }

    init(fd: FileDescriptor, peer: String, identity: Identity? = nil, relay: Relay) {
        self.fd = fd
        self.peer = peer
        self.identity = identity
        self.relay = relay
        handshake = Handshake(limits: Handshake.Limits(maxHead: relay.limits.maxRequestHead,
                                                       maxBody: relay.limits.maxUpgradeBody(relay.settings),
                                                       maxRequests: relay.limits.maxAPIRequestsPerConnection),
                              resolve: { [unowned relay] target in
            if case .refused(let refusal) = relay.resolve(target) { return refusal }
            return nil
        }, authorize: { [unowned relay] request in
            relay.authorizePortForward(target: request.target, authorization: request.header("authorization"), identity: identity)
        })
    }

    func start() {
        armTimer()
        receive()
    }

    /// Each request (and its answer) gets the handshake timeout anew: a kept-alive connection is
    /// bounded per request, and by `--max-api-requests` in all.
    private func armTimer() {
        timer = relay.reactor.timer(nanoseconds: UInt64(relay.limits.handshakeTimeout * 1e9), handler: self, tag: Tag.timer.rawValue)
    }

    private func receive() { relay.reactor.receive(fd, handler: self, tag: Tag.receive.rawValue) }

    func complete(_ completion: Completion) {
        if done {
            if completion.buffer != BufferPool.none { relay.reactor.buffers.release(completion.buffer) }
            return
        }
        if completion.tag == Tag.timer.rawValue {
            // Half an answer written: nothing more can be said on this connection.
            if answer != nil { return close() }
            return act(handshake.timedOut(after: relay.limits.handshakeTimeout))
        }
        if completion.tag == Tag.write.rawValue {
            return written(completion.result)
        }
        guard completion.result > 0 else {
            close()
            return
        }
        let pool = relay.reactor.buffers
        if firstBytes {
            firstBytes = false
            // A TLS record (22, a handshake: a ClientHello) where a request should be: an https
            // client at a plain port. Answered at once (its TLS library reports the answer as "not
            // TLS") rather than at the handshake timeout.
            if pool.pointer(completion.buffer).load(as: UInt8.self) == 0x16 {
                pool.release(completion.buffer)
                return refuse(.badRequest("the client sent a TLS handshake to a plain HTTP port"))
            }
        }
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
        case .serve(let request):
            serve(request)
        case .close:
            close()
        }
    }

    private func serve(_ api: Handshake.APIRequest) {
        let request = api.request
        let response = relay.apiResponse(method: request.method, target: request.target, headers: request.fields, identity: identity)
        relay.limitedLog("api: \(request.method) \(request.target.prefix(256)) from \(peer): \(response.status)")
        var head = "HTTP/1.1 \(response.status) \(response.reasonPhrase)\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        head += "Content-Length: \(response.body.utf8.count)\r\n"
        if !api.keepAlive { head += "Connection: close\r\n" }
        head += "\r\n"
        var bytes = Array(head.utf8)
        if request.method != "HEAD" { bytes.append(contentsOf: response.body.utf8) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        answer = buffer
        answerWritten = 0
        keepAlive = api.keepAlive
        writeAnswer()
    }

    private func writeAnswer() {
        guard let answer else { return }
        relay.reactor.write(fd, from: answer.baseAddress! + answerWritten, count: answer.count - answerWritten,
                            handler: self, tag: Tag.write.rawValue)
    }

    private func written(_ result: Int32) {
        guard let buffer = answer, result > 0 else { return close() }
        answerWritten += Int(result)
        if answerWritten < buffer.count { return writeAnswer() }
        answer = nil
        buffer.deallocate()
        guard keepAlive else {
            finish()
            // As after a refusal: unread bytes would turn the close into a reset that loses the answer.
            Sockets.shutdownWrite(fd)
            relay.reactor.close(fd)
            return
        }
        relay.reactor.cancelTimer(timer)
        armTimer()
        act(handshake.nextRequest())
    }

    /// Ends the connection without a word; an answer still being written is freed only when
    /// no cancelled write can read it.
    private func close() {
        finish()
        if let buffer = answer {
            answer = nil
            relay.reactor.close(fd) { buffer.deallocate() }
        } else {
            relay.reactor.close(fd)
        }
    }

    private func finish() {
        done = true
        relay.reactor.cancelTimer(timer)
        relay.handshakeDone(self)
    }

    private func become(upgrade: Handshake.Upgrade?, initial: ArraySlice<UInt8>) {
        if let upgrade, upgrade.frontEnd == .channel { return becomeChannels(upgrade.request, initial: initial) }
        if let upgrade, upgrade.frontEnd == .spdy || upgrade.frontEnd == .spdyOverWebSocket {
            return becomeSPDY(upgrade.request, overWebSocket: upgrade.frontEnd == .spdyOverWebSocket, initial: initial)
        }
        let session: RelaySession
        do {
            session = try RelaySession(fd: fd, peer: peer, identity: identity, relay: relay)
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
            // Stream 1 is checked as every stream is, with the upgrade request's credentials.
            if let authorization = request.header("authorization") { headers.fields.append(("authorization", authorization)) }
            session.upgraded(headers: headers, body: upgrade.body)
        } else {
            finish()
            relay.adopt(session)
        }
        initial.withUnsafeBytes { session.connection.start(initial: $0) }
    }

    /// kubectl's SPDY upgrade, plain or inside a WebSocket: `101`, then the connection is an
    /// `SPDYRelaySession` for the pod the path names (resolved by the handshake already).
    private func becomeSPDY(_ request: RequestHead, overWebSocket: Bool, initial: ArraySlice<UInt8>) {
        guard case .pod(let pod) = relay.resolve(request.target) else {
            return refuse(.unknownPath(request.target))
        }
        var answer = HTTPText.spdySwitchingProtocols
        if overWebSocket {
            switch WebSocketHandshake.validate(method: request.method, fields: request.fields.fields,
                                               supported: [TunnelSubprotocol.spdy]) {
            case .success(let accepted):
                answer = WebSocketHandshake.switchingProtocols(accepted)
            case .failure(let error):
                // A 400 (or 426): kubectl retries with plain SPDY on a new connection.
                return refuse(webSocket: error)
            }
        }
        let session: SPDYRelaySession
        do {
            session = try SPDYRelaySession(fd: fd, peer: peer, pod: pod, relay: relay, overWebSocket: overWebSocket)
        } catch {
            finish()
            relay.limitedLog("SPDY session: \(error)")
            relay.reactor.close(fd)
            return
        }
        guard writeAll(Array(answer.utf8)) else {
            finish()
            relay.reactor.close(fd)
            return
        }
        finish()
        relay.adopt(session)
        relay.limitedLog("port-forward from \(peer): SPDY/3.1\(overWebSocket ? " in a WebSocket" : "") for pod \(pod.namespace)/\(pod.name)")
        initial.withUnsafeBytes { session.start(initial: $0) }
    }

    /// The channel protocol: `101`, the ports announced, every port connected at once.
    private func becomeChannels(_ request: RequestHead, initial: ArraySlice<UInt8>) {
        guard case .pod(let pod) = relay.resolve(request.target) else {
            return refuse(.unknownPath(request.target))
        }
        let query = request.target.firstIndex(of: "?").map { request.target[request.target.index(after: $0)...] } ?? ""
        let ports: [UInt16]
        switch ChannelPorts.parse(query: query) {
        case .success(let parsed): ports = parsed
        case .failure(let error): return refuse(.badRequest("\(error)"))
        }
        let accepted: WebSocketHandshake.Accepted
        switch WebSocketHandshake.validate(method: request.method, fields: request.fields.fields,
                                           supported: ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"]) {
        case .success(let value): accepted = value
        case .failure(let error): return refuse(webSocket: error)
        }
        let encoding = accepted.subprotocol.flatMap(ChannelEncoding.init(subprotocol:)) ?? .binary
        guard writeAll(Array(WebSocketHandshake.switchingProtocols(accepted).utf8)) else {
            finish()
            relay.reactor.close(fd)
            return
        }
        finish()
        let session = ChannelRelaySession(fd: fd, peer: peer, pod: pod, relay: relay, encoding: encoding, ports: ports)
        relay.adopt(session)
        relay.limitedLog("port-forward from \(peer): \(encoding.subprotocol) for pod \(pod.namespace)/\(pod.name), ports \(ports.map(String.init).joined(separator: ","))")
        initial.withUnsafeBytes { session.start(initial: $0) }
    }

    /// A WebSocket handshake the request got wrong: its own status and answer.
    private func refuse(webSocket error: HandshakeError) {
        finish()
        relay.limitedLog("request from \(peer) refused with \(error.status): \(error)")
        _ = writeAll(Array(error.response.utf8))
        Sockets.shutdownWrite(fd)
        relay.reactor.close(fd)
    }

    private func refuse(_ refusal: Refusal) {
        finish()
        relay.limitedLog("request from \(peer) refused with \(refusal.status): \(refusal.text)")
        _ = writeAll(Array(HTTPText.response(status: refusal.status, reason: refusal.reasonPhrase, contentType: refusal.contentType,
                                             body: refusal.body).utf8))
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
