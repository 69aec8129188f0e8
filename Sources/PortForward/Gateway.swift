import CLinuxShim
import HTTP2
import Reactor
import TLS
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What the gateway does beyond a relay's limits (docs/PROTOCOL.md, "The gateway").
public struct GatewaySettings: Sendable {
    /// How often each node relay's pod list is read again (`--refresh-interval`).
    public var refreshSeconds: Double = 2
    /// A node's dial, and a stream's wait for the node relay's answer (`--connect-timeout`).
    public var connectTimeoutSeconds: Double = 5
    /// PING a node relay after this long without a byte from it; give the connection up when no
    /// answer came within the timeout.
    public var keepalive = Keepalive(interval: 5, timeout: 5)
    /// Re-dials of a lost node: from about `initialBackoff`, doubling to `maximumBackoff`, each
    /// drawn from [wait / 2, wait]. The cap keeps a restarted node relay served within 2 s.
    public var initialBackoffSeconds: Double = 0.1
    public var maximumBackoffSeconds: Double = 1
    /// A node relay's pod list larger than this is refused (the node is then unreachable).
    public var maximumPodListBytes = 16 << 20
    /// Sent to node relays as `authorization: Bearer ...` (`--node-token`), only over https.
    public var token: String?
    /// For `https://` node addresses: the CA, and the gateway's client certificate (mutual TLS).
    public var tls = TLSClientOptions()

    public init() {}
}

/// The API server's tier: a relay (the same front ends, pod API, authentication and limits)
/// whose pods are the union of what its node relays report, and whose connector carries each
/// forwarded connection as one stream of the ONE HTTP/2 connection it keeps to the pod's node.
/// docs/ARCHITECTURE.md, "The gateway".
public final class Gateway {
    public let relay: Relay
    public private(set) var links: [NodeLink] = []
    public let settings: GatewaySettings
    let connector: GatewayConnector
    /// Node lines (reachable, unreachable), on standard output.
    public var print: (String) -> Void = { line in
        Swift.print(line)
        fflush(stdout)
    }
    /// Called once, when every node has either answered its first pod list or failed once.
    public var onReady: (() -> Void)?
    private var readySent = false
    private(set) var tlsContext: TLSContext?

    public init(listen: SocketAddress, nodes: [NodeEntry], reactor: ReactorBackend, limits: RelayLimits = RelayLimits(),
                settings: GatewaySettings = GatewaySettings()) throws {
        self.settings = settings
        connector = GatewayConnector(reactor: reactor)
        relay = try Relay(listen: listen, node: "gateway", registry: PodRegistry(), connector: connector, reactor: reactor,
                          limits: limits)
        relay.nodes = Set(nodes.map(\.name))
        if nodes.contains(where: \.secure) {
            let options = settings.tls
            tlsContext = try TLSContext.client(certificateAuthorityFile: options.certificateAuthorityFile,
                                               clientCertificateFile: options.clientCertificateFile,
                                               clientKeyFile: options.clientKeyFile,
                                               insecureSkipVerify: options.insecureSkipVerify,
                                               cipherList: options.cipherList)
        }
        links = nodes.map { NodeLink(entry: $0, gateway: self) }
        connector.gateway = self
        relay.unreachableNode = { [unowned self] node in
            self.link(node).flatMap { $0.reachable ? nil : $0.lastReason }
        }
    }

    public func start() {
        relay.start()
        for link in links { link.start() }
    }

    /// SIGTERM: no new connection or stream; GOAWAY to every client and node; the streams open
    /// may finish within `deadlineSeconds`, then the loop stops.
    public func drain(deadlineSeconds: Double) {
        relay.drain()
        let deadline = Clock.nanoseconds() + UInt64(deadlineSeconds * 1e9)
        func check() {
            if relay.streams == 0 || Clock.nanoseconds() >= deadline {
                for link in links { link.stop() }
                // What the last turn queued (GOAWAY frames) goes out before the loop stops.
                let reactor = relay.reactor
                _ = reactor.timer(nanoseconds: 100_000_000, handler: Later { reactor.stop() }, tag: 0)
                return
            }
            _ = relay.reactor.timer(nanoseconds: 50_000_000, handler: Later(check), tag: 0)
        }
        check()
    }

    func link(_ node: String) -> NodeLink? { links.first { $0.entry.name == node } }

    /// A node's pods or reachability changed: the union is rebuilt. A pod that several nodes
    /// report is kept apart (`Relay.conflicts`), not guessed between.
    func podsChanged() {
        var byName: [String: [Pod]] = [:]
        for link in links {
            for var pod in link.pods {
                if !link.reachable { pod.phase = "Unknown" }
                byName[pod.qualifiedName, default: []].append(pod)
            }
        }
        var single: [Pod] = []
        var several: [String: [Pod]] = [:]
        for (name, pods) in byName {
            if pods.count == 1 { single.append(pods[0]) } else { several[name] = pods }
        }
        for (name, pods) in several where relay.conflicts[name]?.count != pods.count {
            print("pod \(name) is reported by \(pods.count) nodes (\(pods.compactMap(\.node).sorted().joined(separator: ", "))): "
                  + "a request must name the node (/proxy/nodes/<node>/portForward/...)")
        }
        relay.registry = PodRegistry(single)
        relay.conflicts = several
    }

    /// A node's first dial ended (listed or failed): once all have, the gateway is ready.
    func nodeReported() {
        guard !readySent, links.allSatisfy(\.reported) else { return }
        readySent = true
        onReady?()
    }
}

/// The gateway's connector: a pod's port is reached through a stream of the pod's node
/// connection. The node stream's tunnel and the client stream's tunnel are joined
/// (`Tunnel.join`): what one would write to its socket is the other's read, so the bytes move
/// from one connection's pipe or buffer straight into the other's frames, and each window opens
/// only when the bytes have left through the other stream.
final class GatewayConnector: Connector {
    let name = "gateway"
    let reactor: ReactorBackend
    weak var gateway: Gateway?

    init(reactor: ReactorBackend) { self.reactor = reactor }

    func connect(pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) -> ConnectAttempt {
        let attempt = UpstreamAttempt(connector: self, pod: pod, port: port, done: done)
        guard let gateway, let node = pod.node, let link = gateway.link(node) else {
            attempt.finish(.failed(.podNotFound(namespace: pod.namespace, name: pod.name)))
            return attempt
        }
        link.open(attempt)
        return attempt
    }
}

/// One forwarded connection being opened on a node connection: the stream's request is sent at
/// once; the client's tunnel joins the node stream's tunnel when the node relay answers 200.
final class UpstreamAttempt: ConnectAttempt, CompletionHandler {
    unowned let connector: GatewayConnector
    let pod: Pod
    let port: Int
    private var done: ((ConnectResult) -> Void)?
    /// The tunnel of the node stream.
    private(set) var upstream: Tunnel?
    private var timer: TimerID = 0
    private var timerArmed = false
    var node: String { pod.node ?? "?" }

    init(connector: GatewayConnector, pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) {
        self.connector = connector
        self.pod = pod
        self.port = port
        self.done = done
    }

    var waiting: Bool { done != nil }

    /// Opens the stream on `connection` (`table` routes its events).
    func start(on connection: Connection, table: StreamTable, link: NodeLink, settings: GatewaySettings) {
        let carrier = HTTP2Stream(connection: connection)
        let tunnel = Tunnel(transport: carrier, reactor: connector.reactor, pipes: connector.gateway?.relay.pipes)
        carrier.carry(tunnel)
        var headers = [
            (":method", "POST"), (":scheme", link.entry.secure ? "https" : "http"), (":authority", "\(link.entry.address)"),
            (":path", ForwardPath(namespace: pod.namespace, pod: pod.name).path), ("port", "\(port)"),
        ]
        if let token = settings.token, link.entry.secure { headers.append(("authorization", "Bearer \(token)")) }
        do {
            carrier.id = try connection.session.submitRequest(headers, body: carrier)
        } catch {
            tunnel.connectionLost()
            return finish(.failed(.nodeUnavailable(node: node, reason: "cannot open a stream: \(error)")))
        }
        upstream = tunnel
        let id = carrier.id
        let key = NodeLink.PendingKey(table: ObjectIdentifier(table), stream: id)
        link.pending[key] = self
        // Once answered, the attempt is gone (the session held it only while connecting): the
        // tunnel's callbacks hold it weakly.
        table.add(carrier, tunnel) { [weak self, weak link] _ in
            link?.pending[key] = nil
            // Ended before any answer (reset, refused after GOAWAY, the connection lost).
            if let self, self.waiting {
                self.finish(.failed(.nodeUnavailable(node: self.node, reason: link?.lastReason ?? "the stream ended before an answer")))
            }
        }
        tunnel.onRejected = { [weak self] status, reason in
            self?.finish(.failed(.upstream(status: status, text: reason)))
        }
        timer = connector.reactor.timer(nanoseconds: UInt64(settings.connectTimeoutSeconds * 1e9), handler: self, tag: 0)
        timerArmed = true
        connection.flushSoon()
    }

    /// The node relay answered 200: the client's tunnel joins the node stream's.
    func answered() {
        guard waiting, let upstream else { return }
        finish(.joined(upstream))
    }

    /// The connect timeout: no answer from the node relay.
    func complete(_ completion: Completion) {
        timerArmed = false
        guard waiting else { return }
        let seconds = connector.gateway?.settings.connectTimeoutSeconds ?? 0
        finish(.failed(.upstream(status: 504, text: "node \"\(node)\" did not answer the stream for port \(port) within \(seconds.formatted1) s")))
        upstream?.abort()
    }

    func finish(_ result: ConnectResult) {
        if timerArmed { connector.reactor.cancelTimer(timer); timerArmed = false }
        let callback = done
        done = nil
        callback?(result)
    }

    /// The client's stream went away first.
    func cancel() {
        guard waiting else { return }
        done = nil
        if timerArmed { connector.reactor.cancelTimer(timer); timerArmed = false }
        upstream?.abort()
    }
}

/// The gateway's connection to one node relay: dialled without blocking, HTTP/2 with prior
/// knowledge (or TLS with ALPN h2 for `https://`), kept alive with PING, re-dialled with
/// backoff when lost. Its pod list is read at each connection and every `refreshSeconds`.
public final class NodeLink: CompletionHandler {
    public let entry: NodeEntry
    unowned let gateway: Gateway
    private var reactor: ReactorBackend { gateway.relay.reactor }
    private var settings: GatewaySettings { gateway.settings }
    private var connection: Connection?
    private var table = StreamTable()
    /// Connections the node said GOAWAY on: their streams finish there; new ones go to the next.
    private var draining: [ObjectIdentifier: (Connection, StreamTable)] = [:]
    private var tls: TLSConnection?
    private var tlsFailure: String?
    /// Connected and listed.
    public private(set) var reachable = false
    /// The first dial ended (listed, or failed).
    public private(set) var reported = false
    public private(set) var pods: [Pod] = []
    /// Why the node cannot be reached, for the streams refused meanwhile.
    public private(set) var lastReason = "not connected yet"
    private var failures = 0
    private var dial: NodeDial?
    private var stopped = false
    /// Streams sent and not answered yet, by connection (its table) and stream: a connection the
    /// node said GOAWAY on numbers its streams as the next one does.
    var pending: [PendingKey: UpstreamAttempt] = [:]
    struct PendingKey: Hashable {
        let table: ObjectIdentifier
        let stream: StreamID
    }
    private var listStream: StreamID?
    private var listStatus = 0
    private var listBody: [UInt8] = []
    private var listTooLarge = false
    private var listStarted: UInt64 = 0
    /// When the current connection was made.
    private var connectedAt: UInt64 = 0
    private var refreshArmed = false

    private enum Tag: UInt32 { case redial = 1, refresh }

    init(entry: NodeEntry, gateway: Gateway) {
        self.entry = entry
        self.gateway = gateway
    }

    func start() { startDial() }

    func stop() {
        stopped = true
        dial?.cancel()
        dial = nil
        for (connection, _) in draining.values { connection.close(reason: nil) }
        if let connection {
            connection.session.terminate()
            connection.flushSoon()
        }
    }

    private func startDial() {
        guard !stopped, connection == nil, dial == nil else { return }
        let dial = NodeDial(link: self, reactor: reactor, address: entry.address, timeoutSeconds: settings.connectTimeoutSeconds)
        self.dial = dial
        dial.start()
    }

    /// The TCP connection is up (or not).
    func dialed(_ result: Result<FileDescriptor, DialFailure>) {
        dial = nil
        switch result {
        case .failure(let failure):
            failed(failure.reason)
        case .success(let fd):
            do {
                try established(fd)
            } catch {
                failed("\(error)")
            }
        }
    }

    private func established(_ tcp: FileDescriptor) throws {
        var fd = tcp
        if entry.secure, let context = gateway.tlsContext {
            // Blocking, bounded by the connect timeout: a node relay that takes the TCP
            // connection but not the handshake holds the loop that long (docs/PROTOCOL.md).
            let done: TLSClientHandshake.Established
            do {
                done = try TLSClientHandshake.perform(fd: tcp, context: context, serverName: settings.tls.serverName ?? entry.host,
                                                      timeoutSeconds: min(settings.connectTimeoutSeconds, 2))
            } catch {
                Glibc.close(tcp)
                throw error
            }
            guard done.alpn == "h2" else {
                Glibc.close(tcp)
                throw ForwardError("the node relay did not agree to HTTP/2 over TLS (ALPN \(done.alpn ?? "none"))")
            }
            let pump = TLSConnection(established: done, reactor: reactor, peer: "\(entry.address)", deadlineSeconds: 2)
            // TLS 1.3: a node relay that refuses the gateway's certificate says so in an alert
            // after the handshake; the pump's line is the reason the connection then ends with.
            tlsFailure = nil
            pump.log = { [unowned self] line in
                self.tlsFailure = line
                self.gateway.relay.limitedLog("node \(self.entry.name): \(line)")
            }
            tls = pump
            fd = try pump.openInner()
        }
        var sessionSettings = SessionSettings()
        sessionSettings.maxConcurrentStreams = UInt32(gateway.relay.limits.maxStreams)
        let session = try Session(role: .client, settings: sessionSettings)
        let connection = Connection(fd: fd, session: session, reactor: reactor)
        let table = StreamTable()
        self.connection = connection
        self.table = table
        connectedAt = Clock.nanoseconds()
        table.serve(connection, pipes: gateway.relay.pipes) { [unowned self, unowned connection] reason in
            self.lost(connection, reason: reason)
        }
        table.onHeaders = { [unowned self, unowned table, unowned connection] headers, stream, endStream in
            if connection === self.connection, stream == self.listStream {
                if let status = headers[":status"] { self.listStatus = Int(status) ?? 0 }
                return
            }
            guard let tunnel = table[stream] else { return }
            if let status = headers[":status"], let code = Int(status), !(100..<200).contains(code) {
                tunnel.responded(status: code)
                if code == 200 { self.pending.removeValue(forKey: PendingKey(table: ObjectIdentifier(table), stream: stream))?.answered() }
            }
            if endStream { tunnel.peerEnded() }
        }
        table.onOtherData = { [unowned self, unowned connection] stream, data in
            guard connection === self.connection, stream == self.listStream else { return }
            if self.listBody.count + data.count > self.settings.maximumPodListBytes {
                if !self.listTooLarge { connection.session.reset(stream) }
                self.listTooLarge = true
            } else {
                self.listBody.append(contentsOf: data)
            }
        }
        table.onOtherClosed = { [unowned self, unowned connection] stream, code in
            if connection === self.connection, stream == self.listStream { self.listed(reset: code != 0) }
        }
        session.onGoaway = { [unowned self, unowned connection] in self.goaway(connection) }
        session.log = { [unowned self] line in self.gateway.relay.limitedLog("node \(self.entry.name): \(line)") }
        connection.keepalive = settings.keepalive
        connection.start()
        list()
    }

    // MARK: the pod list

    private func list() {
        guard let connection, !connection.isClosed, listStream == nil else { return }
        var headers = [
            (":method", "GET"), (":scheme", entry.secure ? "https" : "http"), (":authority", "\(entry.address)"),
            (":path", "/api/v1/pods"), ("accept", "application/json"),
        ]
        if let token = settings.token, entry.secure { headers.append(("authorization", "Bearer \(token)")) }
        listStatus = 0
        listBody = []
        listTooLarge = false
        listStarted = Clock.nanoseconds()
        do {
            listStream = try connection.session.submitRequest(headers, body: nil)
        } catch {
            return connection.close(reason: "cannot ask for the pod list: \(error)")
        }
        connection.flushSoon()
    }

    private func listed(reset: Bool) {
        listStream = nil
        let body = String(decoding: listBody, as: UTF8.self)
        listBody = []
        guard let connection else { return }
        let problem: String?
        var found: [Pod] = []
        if listTooLarge {
            problem = "the pod list is larger than \(settings.maximumPodListBytes) bytes"
        } else if reset || listStatus == 0 {
            problem = "the node relay reset the pod list (or it took longer than \(settings.connectTimeoutSeconds.formatted1) s)"
        } else if listStatus != 200 {
            problem = "the node relay answered \(listStatus) to the pod list: \(Refusal.statusMessage(body) ?? Refusal.message(body: body))"
        } else {
            do {
                found = try PodDescription.list(json: body).map { description in
                    Pod(namespace: description.namespace, name: description.name,
                        ports: description.ports.map { ContainerPort(name: $0.name, containerPort: $0.number) },
                        node: entry.name, phase: description.phase)
                }
                problem = nil
            } catch {
                problem = "the pod list is not readable: \(error)"
            }
        }
        if let problem {
            guard reachable else {
                // A node whose pods cannot be known is not served: it is dialled again later.
                connection.close(reason: problem)
                return
            }
            // A refresh failed: the streams on the connection go on, with the pods last listed.
            gateway.relay.limitedLog("node \(entry.name): \(problem): keeping the pods listed before")
            return armRefresh()
        }
        failures = 0
        let changed = found != pods || !reachable
        pods = found
        if !reachable {
            reachable = true
            gateway.print("node \(entry.name) reachable at \(entry.address) (\(pods.count) pods)")
        }
        if changed { gateway.podsChanged() }
        if !reported {
            reported = true
            gateway.nodeReported()
        }
        armRefresh()
    }

    private func armRefresh() {
        guard !refreshArmed, !stopped else { return }
        refreshArmed = true
        _ = reactor.timer(nanoseconds: UInt64(settings.refreshSeconds * 1e9), handler: self, tag: Tag.refresh.rawValue)
    }

    // MARK: streams

    /// A forwarded connection to one of this node's pods: a stream of the node connection, or
    /// a 503 with the reason when there is none.
    func open(_ attempt: UpstreamAttempt) {
        guard let connection, !connection.isClosed else {
            return attempt.finish(.failed(.nodeUnavailable(node: entry.name, reason: lastReason)))
        }
        attempt.start(on: connection, table: table, link: self, settings: settings)
    }

    // MARK: losing the node

    private func goaway(_ old: Connection) {
        guard old === connection else { return }
        // Its streams finish there; the next stream goes to a new connection.
        draining[ObjectIdentifier(old)] = (old, table)
        connection = nil
        table = StreamTable()
        listStream = nil
        lastReason = "the node relay said GOAWAY"
        // A node relay that says GOAWAY soon after every connection is not re-dialled at round-trip
        // speed: the backoff, as after a failure.
        if Clock.nanoseconds() - connectedAt < Self.shortLivedNanoseconds {
            scheduleRedial()
        } else {
            startDial()
        }
    }

    /// A connection that ends sooner than this after it was made counts as a failed dial.
    static let shortLivedNanoseconds: UInt64 = 2_000_000_000

    private func lost(_ old: Connection, reason: String?) {
        if draining.removeValue(forKey: ObjectIdentifier(old)) != nil { return }
        guard old === connection else { return }
        connection = nil
        listStream = nil
        tls = nil
        failed(tlsFailure ?? reason ?? Connection.closedByPeer)
    }

    private func failed(_ reason: String) {
        lastReason = reason
        // Stopping (the gateway drains): the connections it closes itself are not news.
        guard !stopped else { return }
        if reachable || !reported {
            gateway.print("node \(entry.name) unreachable at \(entry.address): \(reason)")
        }
        if reachable {
            reachable = false
            gateway.podsChanged()
        }
        if !reported {
            reported = true
            gateway.nodeReported()
        }
        scheduleRedial()
    }

    /// The next dial after a backoff: from `initialBackoff`, doubling with each failure up to
    /// `maximumBackoff`, each wait drawn from [wait / 2, wait].
    private func scheduleRedial() {
        let base = min(settings.initialBackoffSeconds * Double(1 << min(failures, 20)), settings.maximumBackoffSeconds)
        failures += 1
        let wait = base * (1 - 0.5 * Double.random(in: 0..<1))
        _ = reactor.timer(nanoseconds: UInt64(max(wait, 0.001) * 1e9), handler: self, tag: Tag.redial.rawValue)
    }

    public func complete(_ completion: Completion) {
        switch Tag(rawValue: completion.tag) {
        case .redial:
            startDial()
        case .refresh:
            refreshArmed = false
            guard let connection else { return }
            if let stream = listStream {
                // A list that does not end is given up (reset: `listed` says so) at the connect timeout.
                if Clock.nanoseconds() - listStarted >= UInt64(settings.connectTimeoutSeconds * 1e9) {
                    connection.session.reset(stream)
                    connection.flushSoon()
                }
                return armRefresh()
            }
            list()
        case nil:
            break
        }
    }
}

/// One non-blocking dial of a node relay, within the connect timeout.
final class NodeDial: CompletionHandler {
    weak var link: NodeLink?
    let reactor: ReactorBackend
    let address: SocketAddress
    let timeout: UInt64
    private var fd: FileDescriptor = -1
    private var timer: TimerID = 0
    private var done = false

    init(link: NodeLink, reactor: ReactorBackend, address: SocketAddress, timeoutSeconds: Double) {
        self.link = link
        self.reactor = reactor
        self.address = address
        timeout = UInt64(timeoutSeconds * 1e9)
    }

    func start() {
        do {
            fd = try Sockets.socket(for: address)
        } catch {
            return finish(.failure(DialFailure(reason: "\(error)")))
        }
        timer = reactor.timer(nanoseconds: timeout, handler: self, tag: 2)
        reactor.connect(fd, address: address, handler: self, tag: 1)
    }

    func cancel() {
        guard !done else { return }
        done = true
        reactor.cancelTimer(timer)
        if fd >= 0 { reactor.close(fd); fd = -1 }
    }

    func complete(_ completion: Completion) {
        guard !done else { return }
        if completion.tag == 2 {
            if fd >= 0 { reactor.close(fd); fd = -1 }
            return finish(.failure(DialFailure(reason: "no connection within \((Double(timeout) / 1e9).formatted1) s")))
        }
        reactor.cancelTimer(timer)
        if completion.result == 0 {
            let connected = fd
            fd = -1
            return finish(.success(connected))
        }
        reactor.close(fd)
        fd = -1
        finish(.failure(DialFailure(reason: SystemError.reason(-completion.result))))
    }

    private func finish(_ result: Result<FileDescriptor, DialFailure>) {
        done = true
        link?.dialed(result)
    }
}

struct DialFailure: Error {
    var reason: String
}

