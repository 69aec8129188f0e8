import CLinuxShim
import CNGHTTP2
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One HTTP/2 connection on the relay: each stream with a `port` header becomes a tunnel to that
/// port of the pod its path names.
final class RelaySession: OpenQueue {
    let connection: Connection
    unowned let relay: Relay
    let peer: String
    /// The connection's client-certificate identity (TLS), if it showed one; each stream's own
    /// `authorization` header comes first (port-forward streams and API requests alike).
    let identity: Identity?
    let table = StreamTable()
    var attempts: [StreamID: ConnectAttempt] = [:]

    // Stream opens waiting for their turn (OpenScheduler), oldest first.
    private struct WaitingOpen {
        var stream: HTTP2Stream
        var tunnel: Tunnel
        var pod: Pod
        var port: Int
    }
    private var waitingOpens: WaitingOpens<WaitingOpen>
    var inOpenScheduler = false

    init(fd: FileDescriptor, peer: String, identity: Identity? = nil, relay: Relay) throws {
        self.relay = relay
        self.peer = peer
        self.identity = identity
        waitingOpens = WaitingOpens(rate: relay.limits.streamOpenRate)
        let session = try Session(role: .server, settings: relay.settings)
        connection = Connection(fd: fd, session: session, reactor: relay.reactor,
                                maxHeldBytes: relay.limits.maxHeldBytesPerConnection)
        session.log = { [unowned relay] line in relay.limitedLog("\(peer): \(line)") }
        connection.maxQueuedFrames = relay.limits.maxQueuedFrames
        connection.keepalive = relay.limits.keepalive.interval > 0 ? relay.limits.keepalive : nil
        connection.idleTimeoutSeconds = relay.limits.idleTimeout
        table.serve(connection, pipes: relay.pipes) { [unowned self] reason in self.closed(reason) }
        table.onHeaders = { [unowned self] headers, stream, endStream in
            self.headers(headers, stream: stream, endStream: endStream)
        }
    }

    /// Stream 1 of an upgraded connection: the HTTP/1.1 request, its body already read.
    func upgraded(headers: HeaderList, body: [UInt8]) {
        if headers["port"] == nil || headers[":path"] == "*" {
            // The request only opened the session.
            do {
                try connection.session.submitResponse(1, headers: [(":status", "200")], body: nil)
            } catch {
                relay.limitedLog("\(peer): cannot answer the upgrade request: \(error)")
                connection.session.terminate(code: NGHTTP2_INTERNAL_ERROR.rawValue)
                connection.flushSoon()
            }
            return
        }
        guard let tunnel = request(headers: headers, stream: 1, endStream: false) else { return }
        tunnel.windowed = false
        if !body.isEmpty { body.withUnsafeBytes { tunnel.received(.bytes($0, buffer: BufferPool.none)) } }
        tunnel.peerEnded()
    }

    private func headers(_ headers: HeaderList, stream: StreamID, endStream: Bool) {
        if table[stream] != nil {
            // nghttp2 passes a second header block only as trailers (handled by the session);
            // anything else on an answered stream is not a new request.
            connection.session.reset(stream, code: NGHTTP2_PROTOCOL_ERROR.rawValue)
            return
        }
        _ = request(headers: headers, stream: stream, endStream: endStream)
    }

    @discardableResult
    private func request(headers: HeaderList, stream: StreamID, endStream: Bool) -> Tunnel? {
        let method = headers[":method"] ?? ""
        if headers["port"] == nil, method == "GET" || method == "HEAD", let path = headers[":path"], KubernetesAPI.serves(path) {
            // Authorized inside `apiResponse`, as every API request is.
            answerAPI(stream, method: method, target: path, headers: headers)
            return nil
        }
        if let refusal = relay.authorizePortForward(target: headers[":path"] ?? "", authorization: headers["authorization"], identity: identity) {
            answer(stream, refusal)
            return nil
        }
        let pod: Pod
        switch relay.resolve(headers[":path"] ?? "") {
        case .refused(let refusal):
            answer(stream, refusal)
            return nil
        case .pod(let found):
            pod = found
        }
        let port: Int
        switch PortHeader.parse(headers.all("port")) {
        case .failure(let error):
            answer(stream, .badPort(error))
            return nil
        case .success(let value):
            port = value
        }
        if relay.streams >= relay.limits.maxStreams {
            answer(stream, .tooManyStreams(limit: relay.limits.maxStreams))
            return nil
        }
        let carrier = HTTP2Stream(connection: connection, id: stream)
        let tunnel = Tunnel(transport: carrier, reactor: relay.reactor, pipes: relay.pipes)
        carrier.carry(tunnel)
        relay.streams += 1
        table.add(carrier, tunnel) { [unowned self] _ in
            // Reset (or its connection lost) while connecting: the attempt is given up.
            if let attempt = self.attempts.removeValue(forKey: stream) { attempt.cancel() }
            self.relay.streams -= 1
            self.relay.endedSinceTrim += 1
        }
        if endStream { tunnel.peerEnded() }
        waitingOpens.append(WaitingOpen(stream: carrier, tunnel: tunnel, pod: pod, port: port))
        relay.opens.enqueue(self)
        return tunnel
    }

    var hasWaitingOpens: Bool { !waitingOpens.isEmpty }

    func startWaitingOpens(limit: Int) -> (started: Int, wait: UInt64) {
        var started = 0
        let now = Clock.nanoseconds()
        while started < limit {
            // Reset while it waited: nothing to undo.
            switch waitingOpens.next(now: now, peerWait: relay.peerTokenWait(peer, now: now), isGone: { $0.tunnel.finished }) {
            case .empty: return (started, 0)
            case .wait(let nanoseconds): return (started, nanoseconds)
            case .start(let open):
                relay.takePeerToken(peer, now: now)
                started += 1
                connect(open)
            }
        }
        return (started, 0)
    }

    private func connect(_ open: WaitingOpen) {
        let carrier = open.stream
        let stream = carrier.id
        let tunnel = open.tunnel
        var answered = false
        let attempt = relay.connector.connect(pod: open.pod, port: open.port) { [unowned self] result in
            answered = true
            self.attempts[stream] = nil
            switch result {
            case .connected, .joined:
                let late = tunnel.finished
                result.attach(tunnel)
                if late { return }
                do {
                    try self.connection.session.submitResponse(stream, headers: [(":status", "200")], body: carrier)
                } catch {
                    self.relay.limitedLog("\(self.peer): stream \(stream): cannot answer: \(error)")
                    tunnel.abort()
                }
            case .failed(let refusal):
                tunnel.refused()
                self.answer(stream, refusal)
            }
            self.connection.flushSoon()
        }
        // A connector may answer at once (a namespace that cannot be entered): nothing to keep then.
        if !answered { attempts[stream] = attempt }
    }

    /// A Kubernetes API read carried by an HTTP/2 stream (kubectl's, over TLS with ALPN h2): the
    /// relay's answer, whole, with END_STREAM.
    private func answerAPI(_ stream: StreamID, method: String, target: String, headers: HeaderList) {
        let fields = HeadFields(headers.fields.filter { !$0.name.hasPrefix(":") }.map { (name: $0.name, value: $0.value) })
        let response = relay.apiResponse(method: method, target: target, headers: fields, identity: identity)
        relay.limitedLog("api: \(method) \(target.prefix(256)) from \(peer) (HTTP/2): \(response.status)")
        var head = [(":status", "\(response.status)")]
        for (name, value) in response.headers { head.append((name.lowercased(), value)) }
        head.append(("content-length", "\(response.body.utf8.count)"))
        do {
            try connection.session.submitResponse(stream, headers: head, body: method == "HEAD" ? nil : StaticBody(response.body))
        } catch {
            relay.limitedLog("\(peer): stream \(stream): cannot answer: \(error)")
            connection.session.reset(stream, code: NGHTTP2_INTERNAL_ERROR.rawValue)
        }
        connection.flushSoon()
    }

    private func answer(_ stream: StreamID, _ refusal: Refusal) {
        let body = StaticBody(refusal.body)
        do {
            try connection.session.submitResponse(stream, headers: [
                (":status", "\(refusal.status)"), ("content-type", refusal.contentType),
            ], body: body)
        } catch {
            // The stream is already gone (reset by the peer meanwhile): nothing to answer.
            relay.limitedLog("\(peer): stream \(stream): cannot answer \(refusal.status): \(error)")
            connection.session.reset(stream, code: NGHTTP2_INTERNAL_ERROR.rawValue)
        }
        connection.flushSoon()
    }

    private func closed(_ reason: String?) {
        // The tunnels have ended, each cancelling its attempt; whatever is left goes too.
        for attempt in attempts.values { attempt.cancel() }
        attempts.removeAll()
        waitingOpens.removeAll()
        relay.sessionClosed(self, reason: reason)
    }
}
