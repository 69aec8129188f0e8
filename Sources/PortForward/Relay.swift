import CLinuxShim
import CNGHTTP2
import HTTP2
import Reactor
import TLS
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The server side: the API server's part (`/proxy/nodes/<node>/portForward/...`) and the node's
/// part (`/portForward/...`) in one process. Each accepted connection starts as a
/// `PendingConnection`, whose `Handshake` decides what it is (prior-knowledge h2c, or HTTP/1.1
/// with `Upgrade: h2c`), and becomes a `RelaySession`.
public final class Relay: CompletionHandler {
    public let reactor: ReactorBackend
    public let node: String
    /// The pods served: a relay's pods file; a gateway's union of what its nodes report.
    public var registry: PodRegistry { didSet { api = makeAPI() } }
    /// A gateway's pods that several nodes report, by qualified name: not guessed between.
    public var conflicts: [String: [Pod]] = [:] { didSet { api = makeAPI() } }
    /// The nodes a `/proxy/nodes/<node>/...` path may name: a relay's own; a gateway's nodes.
    public var nodes: Set<String>
    public let connector: Connector
    public let listenFD: FileDescriptor
    public let address: SocketAddress
    public let limits: RelayLimits
    public let settings: SessionSettings
    /// Who may ask for what (`--token-auth-file`, `--client-ca-file`, `--authorization-file`);
    /// open by default. Asked in two places: `apiResponse` and `authorizePortForward`.
    public var access = AccessControl()
    var sessions: [ObjectIdentifier: RelaySession] = [:]
    /// kubectl's port-forward connections (plain SPDY/3.1).
    var spdySessions: [ObjectIdentifier: SPDYRelaySession] = [:]
    /// The official clients' port-forward connections (the WebSocket channel protocol).
    var channelSessions: [ObjectIdentifier: ChannelRelaySession] = [:]
    var handshakes: [ObjectIdentifier: PendingConnection] = [:]
    /// With `--tls-cert-file`, the listening port is TLS only: each accepted socket is a
    /// `TLSConnection` whose inner end, once the handshake is done, is accepted like a plain socket.
    public var tls: TLSContext?
    /// TLS connections, and whether each one's handshake is done (those not done yet count as
    /// connections; a done one's inner end is counted as its session).
    private var tlsConnections: [ObjectIdentifier: (connection: TLSConnection, established: Bool)] = [:]
    private var tlsHandshakes = 0
    /// Connections of each peer address not past their handshake (`maxHandshakesPerPeer`).
    private var handshakesByPeer: [String: Int] = [:]
    /// The port is TLS only (`--tls-cert-file`).
    public var tlsEnabled: Bool { tls != nil }
    /// Clients must show a certificate signed by `--client-ca-file` at the handshake.
    public var clientCAConfigured: Bool { tls?.verifiesClients ?? false }
    /// Protocol and connection errors, one line each, rate-limited (`-v`).
    public var log: (String) -> Void = { _ in } {
        didSet { limitedLog = LogLimiter(sink: log) }
    }
    private(set) var limitedLog = LogLimiter { _ in }
    /// Splice mode: pod bytes go socket -> pipe -> client connection (nil: pooled buffers).
    public var pipes: PipePool?
    /// Streams being connected or forwarded (or waiting to be), across every session.
    var streams = 0
    /// Streams and sessions that ended since the last `trimMemory`.
    var endedSinceTrim = 0
    let opens: OpenScheduler
    /// Stream-open buckets of the peer addresses that have connections, and how many each has.
    private var peers: [String: (bucket: TokenBucket, connections: Int)] = [:]
    private let housekeeping = Housekeeping()
    /// What kubectl reads before it port-forwards. A pod is Running when its network namespace
    /// can be entered now (as each stream checks), not as it was at start.
    private(set) var api: KubernetesAPI

    private func makeAPI() -> KubernetesAPI {
        KubernetesAPI(registry: registry, node: node, conflicts: conflicts) { pod in
            pod.networkNamespacePath.map { NetworkNamespace.check($0) == nil } ?? true
        }
    }

    public init(listen: SocketAddress, node: String, registry: PodRegistry, connector: Connector, reactor: ReactorBackend,
                limits: RelayLimits = RelayLimits(), settings: SessionSettings = SessionSettings()) throws {
        self.reactor = reactor
        self.node = node
        self.registry = registry
        self.nodes = [node]
        self.connector = connector
        self.limits = limits
        var settings = settings
        settings.maxConcurrentStreams = limits.maxStreamsPerConnection
        settings.maxHeaderListSize = limits.maxHeaderListSize
        settings.streamResetRate = UInt64(limits.streamResets.rate)
        settings.streamResetBurst = UInt64(limits.streamResets.burst)
        self.settings = settings
        opens = OpenScheduler(reactor: reactor)
        listenFD = try Sockets.listen(listen)
        address = Sockets.localAddress(listenFD)
        api = KubernetesAPI(registry: registry, node: node, isRunning: { _ in true })
        housekeeping.relay = self
        api = makeAPI()
    }

    public func start() {
        reactor.accept(listenFD, handler: self, tag: 0)
        housekeeping.arm()
    }

    public func stop() {
        reactor.close(listenFD)
        housekeeping.stop()
        for session in sessions.values { session.connection.session.terminate(); session.connection.flushSoon() }
        for session in spdySessions.values { session.stop() }
        for session in channelSessions.values { session.stop() }
    }

    /// A graceful stop: no new connection; HTTP/2 clients get a GOAWAY that lets their open
    /// streams finish (SPDY and WebSocket sessions, which cannot say so, are stopped as by `stop`).
    public func drain() {
        reactor.close(listenFD)
        housekeeping.stop()
        for session in sessions.values { session.connection.session.drain(); session.connection.flushSoon() }
        for session in spdySessions.values { session.stop() }
        for session in channelSessions.values { session.stop() }
    }

    public func complete(_ completion: Completion) {
        guard completion.result >= 0 else {
            limitedLog("accept: \(SystemError.reason(-completion.result))")
            return
        }
        let fd = completion.result
        if handshakes.count + tlsHandshakes + sessions.count + spdySessions.count + channelSessions.count >= limits.maxConnections {
            limitedLog("connection refused: \(limits.maxConnections) connections open (--max-connections)")
            Sockets.resetOnClose(fd)
            reactor.close(fd)
            return
        }
        let address = Sockets.peerAddress(fd)
        let peer = address.length > 0 ? address.ip : "?"
        let pending = handshakesByPeer[peer, default: 0]
        if pending >= limits.maxHandshakesPerPeer {
            limitedLog("connection from \(peer) refused: \(pending) of its connections are not past their handshake (--max-handshakes-per-peer)")
            Sockets.resetOnClose(fd)
            reactor.close(fd)
            return
        }
        handshakesByPeer[peer] = pending + 1
        if let tls { return startTLS(fd, peer: peer, context: tls) }
        accepted(fd, peer: peer, identity: nil)
    }

    /// The TLS handshake, within the handshake timeout; then its inner end is `accepted`, with
    /// the verified client certificate's identity (CN the user, each O a group).
    private func startTLS(_ fd: FileDescriptor, peer: String, context: TLSContext) {
        let connection: TLSConnection
        do {
            connection = try TLSConnection(serverSocket: fd, peer: peer, context: context, reactor: reactor,
                                           deadlineSeconds: limits.handshakeTimeout)
        } catch {
            limitedLog("TLS from \(peer): \(error)")
            handshakeEnded(peer)
            reactor.close(fd)
            return
        }
        let key = ObjectIdentifier(connection)
        connection.log = { [unowned self] line in self.limitedLog(line) }
        connection.onEstablished = { [unowned self] inner, tlsPeer in
            self.tlsConnections[key]?.established = true
            self.tlsHandshakes -= 1
            let identity = tlsPeer.subject.flatMap { $0.commonName.isEmpty ? nil : Identity(user: $0.commonName, groups: $0.organizations) }
            self.limitedLog("TLS from \(peer): ALPN \(tlsPeer.alpn ?? "none")\(identity.map { ", client certificate of \(goQuoted($0.user, 256))" } ?? "")")
            self.accepted(inner, peer: peer, identity: identity)
        }
        connection.onClosed = { [unowned self] _ in
            if let entry = self.tlsConnections.removeValue(forKey: key), !entry.established {
                self.tlsHandshakes -= 1
                self.handshakeEnded(peer)
            }
        }
        tlsConnections[key] = (connection, false)
        tlsHandshakes += 1
        connection.start()
    }

    /// A connection ready for its first request: a plain accepted socket, or (with TLS) the
    /// inner end of a connection whose handshake is done, with the client certificate's
    /// identity if it showed one.
    func accepted(_ fd: FileDescriptor, peer: String, identity: Identity?) {
        let handshake = PendingConnection(fd: fd, peer: peer, identity: identity, relay: self)
        handshakes[ObjectIdentifier(handshake)] = handshake
        handshake.start()
    }

    /// Where a path leads: a pod, or why not.
    public enum Target {
        case pod(Pod)
        case refused(Refusal)
    }

    public func resolve(_ path: String) -> Target {
        guard let target = ForwardPath(parsing: path) else { return .refused(.unknownPath(path)) }
        if let node = target.node, !nodes.contains(node) { return .refused(.nodeNotFound(node)) }
        let notOnNode = { (node: String) in Target.refused(.podNotOnNode(namespace: target.namespace, name: target.pod, node: node)) }
        if let several = conflicts["\(target.namespace)/\(target.pod)"] {
            guard let node = target.node else {
                return .refused(.podOnSeveralNodes(namespace: target.namespace, name: target.pod, nodes: several.compactMap(\.node).sorted()))
            }
            return several.first { $0.node == node }.map(Target.pod) ?? notOnNode(node)
        }
        guard let pod = registry.pod(namespace: target.namespace, name: target.pod) else {
            return .refused(.podNotFound(namespace: target.namespace, name: target.pod))
        }
        if let node = target.node, let podNode = pod.node, podNode != node { return notOnNode(node) }
        return .pod(pod)
    }

    /// A Kubernetes API request, from whichever front end carried it (HTTP/1.1 here, an HTTP/2
    /// stream over TLS with ALPN h2, as kubectl sends its reads over https): the one place where
    /// API requests are answered (and, with authorization, checked).
    func apiResponse(method: String, target: String, headers: HeadFields, identity: Identity?) -> KubernetesAPI.Response {
        if let refusal = access.check(authorization: headers.first("authorization"), certificate: identity,
                                      KubernetesAPI.attributes(method: method, target: target)) {
            return KubernetesAPI.failure(refusal)
        }
        return api.respond(method: method, target: target, headers: headers)
    }

    /// The one authorization of a port-forward request, whichever front end carried it (an h2
    /// stream's HEADERS, the h2c, SPDY or WebSocket upgrade request): its target, its
    /// `Authorization` header, the connection's certificate identity. A target that names a pod
    /// (on any of the three paths) is `create pods/portforward` on it; any other target (`*`, an
    /// unknown path) only needs an authenticated caller, and then gets its own answer (404).
    /// Checked before the pod is looked up: who may not ask does not learn which pods exist.
    func authorizePortForward(target: String, authorization: String?, identity: Identity?) -> Refusal? {
        if access.isOpen { return nil }
        let attributes: AccessControl.Attributes
        if let path = ForwardPath(parsing: target) {
            attributes = .portForward(namespace: path.namespace, pod: path.pod)
        } else {
            attributes = .nonResource(verb: "create", path: String(KubernetesAPI.path(of: target)))
        }
        return access.check(authorization: authorization, certificate: identity, attributes)
    }

    func handshakeDone(_ handshake: PendingConnection) {
        if handshakes.removeValue(forKey: ObjectIdentifier(handshake)) != nil { handshakeEnded(handshake.peer) }
    }

    /// A connection of `peer` is past its handshake (in a session) or gone before it.
    private func handshakeEnded(_ peer: String) {
        if let count = handshakesByPeer[peer] { handshakesByPeer[peer] = count > 1 ? count - 1 : nil }
    }

    func adopt(_ session: RelaySession) {
        sessions[ObjectIdentifier(session)] = session
        peerJoined(session.peer)
    }

    /// A connection from `peer` opens streams: it shares the peer's stream-open bucket.
    private func peerJoined(_ peer: String) {
        peers[peer, default: (TokenBucket(limits.peerStreamOpenRate), 0)].connections += 1
    }

    private func peerLeft(_ peer: String) {
        if let entry = peers[peer] {
            peers[peer] = entry.connections > 1 ? (entry.bucket, entry.connections - 1) : nil
        }
    }

    func adopt(_ session: SPDYRelaySession) {
        spdySessions[ObjectIdentifier(session)] = session
        peerJoined(session.peer)
    }

    func spdySessionClosed(_ session: SPDYRelaySession, reason: String?) {
        guard spdySessions.removeValue(forKey: ObjectIdentifier(session)) != nil else { return }
        peerLeft(session.peer)
        endedSinceTrim += 1
        if let reason, reason != Connection.closedByPeer { limitedLog("SPDY session \(session.peer): \(reason)") }
    }

    func adopt(_ session: ChannelRelaySession) {
        channelSessions[ObjectIdentifier(session)] = session
    }

    func channelSessionClosed(_ session: ChannelRelaySession, reason: String?) {
        guard channelSessions.removeValue(forKey: ObjectIdentifier(session)) != nil else { return }
        endedSinceTrim += 1
        if let reason, reason != Connection.closedByPeer { limitedLog("channel session \(session.peer): \(reason)") }
    }

    func sessionClosed(_ session: RelaySession, reason: String?) {
        guard sessions.removeValue(forKey: ObjectIdentifier(session)) != nil else { return }
        endedSinceTrim += 1
        if let reason, reason != Connection.closedByPeer { limitedLog("session \(session.peer): \(reason)") }
        peerLeft(session.peer)
    }

    /// The peer's stream-open bucket: whether a token is there, and how long until one is.
    func peerTokenWait(_ peer: String, now: UInt64) -> UInt64 {
        peers[peer]?.bucket.wait(now: now) ?? 0
    }

    func takePeerToken(_ peer: String, now: UInt64) {
        peers[peer]?.bucket.take(now: now)
    }

    /// Gives memory back after a burst: free pool buffers and the heap's free pages.
    func trimMemory() {
        let returned = reactor.buffers.trim()
        // malloc_trim walks the heap: only after something ended (buffers came back, streams or
        // sessions went away), not on every tick of a steady relay.
        if returned > 0 || endedSinceTrim > 0 { _ = pf_malloc_trim(0) }
        endedSinceTrim = 0
    }
}

/// Every 2 s: hand memory a burst left behind back to the system.
private final class Housekeeping: CompletionHandler {
    weak var relay: Relay?
    private var timer: TimerID = 0
    private var stopped = false
    static let intervalNanoseconds: UInt64 = 2_000_000_000

    func arm() {
        guard let relay, !stopped else { return }
        timer = relay.reactor.timer(nanoseconds: Self.intervalNanoseconds, handler: self, tag: 0)
    }

    func stop() {
        stopped = true
        relay?.reactor.cancelTimer(timer)
    }

    func complete(_ completion: Completion) {
        relay?.trimMemory()
        arm()
    }
}
