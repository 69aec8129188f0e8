import ArgumentParser
import CLinuxShim
import HTTP2
import PortForward
import Reactor
import TLS
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

@main
struct PortForwardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portforward",
        abstract: "Forward local ports to pods through an HTTP/2 relay, in the style of `oc port-forward`.",
        subcommands: [Forward.self, RelayCommand.self, GatewayCommand.self, BenchCommand.self])
}

extension IOBackendChoice: ExpressibleByArgument {}
extension ConnectorChoice: ExpressibleByArgument {}
extension CopyMode: ExpressibleByArgument {}
extension WireProtocol: ExpressibleByArgument {}

struct IOOptions: ParsableArguments {
    @Option(name: .customLong("io"), help: "Reactor backend: auto (io_uring when a ring can be set up), uring or epoll.")
    var backend: IOBackendChoice = .auto

    @Option(help: "How a stream's bytes move: auto, splice (socket -> pipe -> socket) or buffers (pooled buffers).")
    var copy: CopyMode = .auto

    @Flag(name: .shortAndLong, help: "Say more: which backend was taken, connections and errors.")
    var verbose = false

    /// The pipe pool for splice mode; nil for buffers.
    func makePipes() -> PipePool? {
        let mode = copy.resolved
        if verbose { standardError("copy: \(mode.rawValue)") }
        return mode == .splice ? PipePool() : nil
    }

    func makeReactor() throws -> ReactorBackend {
        let reactor = try Reactors.make(backend)
        if verbose { standardError("io: \(reactor.name)") }
        return reactor
    }
}

/// The relay's limits (docs/PROTOCOL.md, "Limits"); defaults from `RelayLimits`.
struct RelayLimitOptions: ParsableArguments {
    private static let defaults = RelayLimits()

    @Option(help: "Connections at once; more are closed at once.")
    var maxConnections = defaults.maxConnections
    @Option(help: "Connections one peer address may have that are not past their handshake (TLS, then the first request); more from it are closed at once.")
    var maxHandshakesPerPeer = defaults.maxHandshakesPerPeer
    @Option(help: "Streams at once across the relay; more are answered 503.")
    var maxStreams = defaults.maxStreams
    @Option(help: "SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have open.")
    var maxStreamsPerConnection = Int(defaults.maxStreamsPerConnection)
    @Option(help: "Largest HTTP/2 header list, bytes (then 431).")
    var maxHeaderListSize = Int(defaults.maxHeaderListSize)
    @Option(help: "Largest HTTP/1.1 request head, bytes (then 431).")
    var maxRequestHead = defaults.maxRequestHead
    @Option(help: "Bytes one connection's streams may hold before the relay stops reading it and its pods.")
    var maxHeldBytes = defaults.maxHeldBytesPerConnection
    @Option(help: "Frames queued for a client that does not read, before the relay stops reading it.")
    var maxQueuedFrames = defaults.maxQueuedFrames
    @Option(help: "Seconds a new connection has to finish its TLS handshake (then closed) and to send its preface or upgrade request (then 408); per request on a kept-alive API connection.")
    var handshakeTimeout = defaults.handshakeTimeout
    @Option(help: "Kubernetes API requests one connection may make before the relay closes it.")
    var maxAPIRequests = defaults.maxAPIRequestsPerConnection
    @Option(help: "Seconds a session may go without a stream before it is ended (0: never).")
    var idleTimeout = defaults.idleTimeout
    @Option(help: "Seconds of silence from a client before a PING (0: no keepalive).")
    var keepaliveInterval = defaults.keepalive.interval
    @Option(help: "Seconds to wait for the PING's answer before ending the session.")
    var keepaliveTimeout = defaults.keepalive.timeout
    @Option(help: "Stream opens per second per connection (0: no limit); opens past it wait.")
    var streamOpenRate = defaults.streamOpenRate.rate
    @Option(help: "Stream opens a connection may make at once before the rate applies.")
    var streamOpenBurst = defaults.streamOpenRate.burst
    @Option(help: "Stream opens per second per peer address, across its connections (0: no limit).")
    var peerStreamOpenRate = defaults.peerStreamOpenRate.rate
    @Option(help: "Stream opens a peer address may make at once before the rate applies.")
    var peerStreamOpenBurst = defaults.peerStreamOpenRate.burst
    @Option(help: "RST_STREAM frames per second a connection may send after its burst (then GOAWAY).")
    var streamResetRate = defaults.streamResets.rate
    @Option(help: "RST_STREAM frames a connection may send at once.")
    var streamResetBurst = defaults.streamResets.burst

    func validate() throws {
        let positive: [(String, Double)] = [
            ("--max-connections", Double(maxConnections)), ("--max-streams", Double(maxStreams)),
            ("--max-handshakes-per-peer", Double(maxHandshakesPerPeer)),
            ("--max-streams-per-connection", Double(maxStreamsPerConnection)),
            ("--max-header-list-size", Double(maxHeaderListSize)), ("--max-request-head", Double(maxRequestHead)),
            ("--max-held-bytes", Double(maxHeldBytes)), ("--max-queued-frames", Double(maxQueuedFrames)),
            ("--handshake-timeout", handshakeTimeout), ("--keepalive-timeout", keepaliveTimeout),
            ("--max-api-requests", Double(maxAPIRequests)),
            ("--stream-open-burst", streamOpenBurst), ("--peer-stream-open-burst", peerStreamOpenBurst),
            ("--stream-reset-rate", streamResetRate), ("--stream-reset-burst", streamResetBurst),
        ]
        for (name, value) in positive where !(value > 0) { throw ValidationError("\(name) must be greater than 0") }
        let nonNegative: [(String, Double)] = [
            ("--idle-timeout", idleTimeout), ("--keepalive-interval", keepaliveInterval),
            ("--stream-open-rate", streamOpenRate), ("--peer-stream-open-rate", peerStreamOpenRate),
        ]
        for (name, value) in nonNegative where !(value >= 0) { throw ValidationError("\(name) must be 0 or more") }
        if maxStreamsPerConnection > Int(UInt32.max) || maxHeaderListSize > Int(UInt32.max) {
            throw ValidationError("--max-streams-per-connection and --max-header-list-size must fit in 32 bits")
        }
    }

    var limits: RelayLimits {
        var limits = RelayLimits()
        limits.maxConnections = maxConnections
        limits.maxHandshakesPerPeer = maxHandshakesPerPeer
        limits.maxStreams = maxStreams
        limits.maxStreamsPerConnection = UInt32(maxStreamsPerConnection)
        limits.maxHeaderListSize = UInt32(maxHeaderListSize)
        limits.maxRequestHead = maxRequestHead
        limits.maxHeldBytesPerConnection = maxHeldBytes
        limits.maxQueuedFrames = maxQueuedFrames
        limits.handshakeTimeout = handshakeTimeout
        limits.maxAPIRequestsPerConnection = maxAPIRequests
        limits.idleTimeout = idleTimeout
        limits.keepalive = Keepalive(interval: keepaliveInterval, timeout: keepaliveTimeout)
        limits.streamOpenRate = TokenBucket.Setting(rate: streamOpenRate, burst: streamOpenBurst)
        limits.peerStreamOpenRate = TokenBucket.Setting(rate: peerStreamOpenRate, burst: peerStreamOpenBurst)
        limits.streamResets = TokenBucket.Setting(rate: streamResetRate, burst: streamResetBurst)
        return limits
    }
}

func standardError(_ line: String) {
    fputs(line + "\n", stderr)
}

/// Prints `error: ...` and exits 1: the one line a user sees for a failure at start.
func fail(_ message: String) -> Never {
    standardError(message.hasPrefix("error:") ? message : "error: \(message)")
    exit(1)
}

struct Forward: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Listen on local ports and forward each connection to a port of a pod.",
        discussion: """
        As kubectl port-forward: POD is NAME or pod/NAME; each port is [LOCAL:]REMOTE, REMOTE a number \
        or a container port's name (5000, 6000:5000, :5000 for a free local port, http, 8080:http). \
        The server and credentials come from the kubeconfig (--kubeconfig, else $KUBECONFIG, else \
        ~/.kube/config) unless --server or $PORTFORWARD_SERVER names the server (the kubeconfig's \
        credentials and CA still apply, as with kubectl --server). When the session to the relay \
        drops, the listeners stay open and the client reconnects (--no-reconnect: it exits).
        """)

    @OptionGroup var kube: ClusterOptions

    @Option(help: "Addresses to listen on, comma-separated: localhost (127.0.0.1 and ::1) or IP addresses.")
    var address = "localhost"

    @Option(help: "How long to wait for the pod to be Running, at start and after a lost session (a Go duration as kubectl's: 1m0s, 30s, or seconds).")
    var podRunningTimeout = "1m0s"

    @Flag(help: "Exit when the session to the relay is lost, instead of reconnecting.")
    var noReconnect = false

    @Option(help: "Seconds a local connection accepted while there is no session waits for the next one.")
    var sessionWaitTimeout: Double = 10

    /// The bench's child: it ends (SIGTERM, as Ctrl-C) when the process that started it does,
    /// even when that one is killed with SIGKILL, instead of living on as an orphan.
    @Option(help: ArgumentHelp("End when process PID, this one's parent, ends.", visibility: .hidden))
    var exitWithParent: Int32?

    @OptionGroup var io: IOOptions

    @Argument(help: "The pod: NAME or pod/NAME.")
    var pod: String

    @Argument(help: "[LOCAL:]REMOTE port specifications; REMOTE may be a container port's name.")
    var ports: [String] = []

    func validate() throws {
        do {
            if ports.isEmpty { _ = try PortSpec.parseAll([]) }
            let requests = try ports.map(PortRequest.init(parsing:))
            // A local port named twice (named ports without a local one are checked once resolved).
            var seen = Set<Int>()
            for request in requests {
                let local: Int? = switch request.remote {
                case .number(let number): request.local ?? number
                case .name: request.local
                }
                if let local, local != 0, !seen.insert(local).inserted {
                    throw ValidationError("local port \(local) is given more than once")
                }
            }
        } catch {
            throw ValidationError("\(error)")
        }
        if address.split(separator: ",").isEmpty { throw ValidationError("--address needs at least one address") }
        if !(sessionWaitTimeout >= 0) { throw ValidationError("--session-wait-timeout must be 0 or more") }
        if GoDuration.seconds(podRunningTimeout) == nil {
            throw ValidationError("invalid --pod-running-timeout \"\(podRunningTimeout)\": expected a duration such as 1m0s, 30s or 45")
        }
    }

    func run() throws {
        if let parent = exitWithParent {
            // Asked for first, then checked: a parent that died before the prctl sends nothing.
            if pf_set_parent_death_signal(SIGTERM) != 0 { fail("prctl(PR_SET_PDEATHSIG): \(String(cString: strerror(pf_errno())))") }
            if getppid() != parent { fail("process \(parent), which started this one, has ended (--exit-with-parent)") }
        }
        Process.ignoreBrokenPipes()
        Process.raiseOpenFileLimit()
        let podName: String
        do { podName = try PodArgument.name(pod) } catch { fail("\(error)") }
        let requests = try ports.map(PortRequest.init(parsing:))
        // The kubeconfig, as kubectl reads it; none at all is fine when --server or
        // $PORTFORWARD_SERVER says where to go.
        var selection: Kubeconfig.Selection?
        do { selection = try kube.selection() } catch { fail("\(error)") }
        let serverURL = kube.serverURL(selection)
        let resolvedNamespace = kube.namespace ?? selection?.namespace ?? "default"
        var options = ForwardOptions(
            server: serverURL,
            // A kubeconfig's server is an API server: ask on the pod's API URL, as kubectl does.
            target: ForwardPath(node: kube.node, namespace: resolvedNamespace, pod: podName,
                                subresource: kube.apiPath || (selection != nil && kube.node == nil)),
            ports: [],
            addresses: address.split(separator: ",").map { String($0).trimmed })
        options.requests = requests
        options.podRunningTimeoutSeconds = GoDuration.seconds(podRunningTimeout) ?? 60
        options.reconnect.enabled = !noReconnect
        options.reconnect.sessionWaitSeconds = sessionWaitTimeout
        options.upgradeTimeoutSeconds = kube.upgradeSeconds
        options.wireProtocol = kube.wireProtocol
        options.keepalive = kube.keepalive
        options.tls = kube.tls.options
        do {
            let verification = try Kubeconfig.verification(insecureFlag: kube.tls.insecureSkipTlsVerify,
                                                           certificateAuthorityFlag: kube.tls.certificateAuthority,
                                                           cluster: selection?.cluster)
            options.tls.insecureSkipVerify = verification.insecureSkipTLSVerify
            options.tls.certificateAuthorityFile = verification.certificateAuthority
            options.tls.certificateAuthorityData = verification.certificateAuthorityData
        } catch {
            fail("\(error)")
        }
        // --token or --token-file (one of them) wins over the kubeconfig's credentials.
        options.token = kube.token
        options.tokenFile = kube.tokenFile
        let tokenFlag = kube.token != nil ? "--token" : kube.tokenFile != nil ? "--token-file" : nil
        var plugin: ExecPlugin?
        if let selection {
            // The flags win over the kubeconfig, field by field, as kubectl's overrides do.
            let cluster = selection.cluster, user = selection.user
            if kube.tls.tlsServerName == nil { options.tls.serverName = cluster.tlsServerName }
            if kube.tls.clientCertificate == nil {
                options.tls.clientCertificateFile = user.clientCertificate
                options.tls.clientKeyFile = user.clientKey
                options.tls.clientCertificateData = user.clientCertificateData
                options.tls.clientKeyData = user.clientKeyData
            }
            if tokenFlag == nil {
                options.token = user.token
                if user.token == nil { options.tokenFile = user.tokenFile }
                if user.token == nil && user.tokenFile == nil, let exec = user.exec {
                    plugin = ExecPlugin(exec: exec, cluster: cluster)
                }
            }
            for line in selection.unsupportedLines { standardError(line) }
            options.credentialSource = selection.userName.map { "user \"\($0)\"" }
        }
        let hasCredentials = options.token != nil || options.tokenFile != nil || plugin != nil
            || options.tls.clientCertificateFile != nil || options.tls.clientCertificateData != nil
        if hasCredentials && !options.sendsCredentials {
            let whose = tokenFlag.map { "\($0) is" } ?? options.credentialSource.map { "the credentials of \($0) are" } ?? "the credentials are"
            standardError("warning: \(whose) not sent to \(options.server): \(tokenFlag != nil ? "it" : "they") would travel in plain text (use an https:// server)")
            plugin = nil
        }
        do {
            let reactor = try io.makeReactor()
            let forwarder = try Forwarder(options: options, reactor: reactor)
            forwarder.execPlugin = plugin
            forwarder.pipes = io.makePipes()
            if io.verbose { forwarder.log = standardError }
            try forwarder.start()
            try reactor.run()
            if forwarder.exitCode != 0 { throw ExitCode(forwarder.exitCode) }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            fail("\(error)")
        }
    }
}

/// kubectl's durations (Go's `time.ParseDuration`: `1m0s`, `30s`, `1h`, `500ms`), or plain seconds.
enum GoDuration {
    static func seconds(_ text: String) -> Double? {
        if let plain = Double(text), plain >= 0 { return plain }
        var total = 0.0
        var rest = Substring(text)
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { $0.isLetter }
            rest = rest.dropFirst(unit.count)
            switch unit {
            case "h": total += value * 3600
            case "m": total += value * 60
            case "s": total += value
            case "ms": total += value / 1000
            default: return nil
            }
        }
        return total
    }
}

/// kubectl's names for the client's TLS settings.
struct ClientTLSOptions: ParsableArguments {
    @Option(help: "A CA certificate file (PEM) the relay's certificate must chain to (default: the system's trusted CAs).")
    var certificateAuthority: String?
    @Option(help: "A client certificate file (PEM), for a relay that asks for one (--client-ca-file).")
    var clientCertificate: String?
    @Option(help: "The client certificate's private key file (PEM).")
    var clientKey: String?
    @Flag(help: "Do not check the relay's certificate at all (insecure: anyone in between can read and change the traffic).")
    var insecureSkipTlsVerify = false
    @Option(help: "The name the relay's certificate must carry (default: the host of --server).")
    var tlsServerName: String?
    @Option(help: ArgumentHelp("TLS cipher suites to allow, OpenSSL names separated by ':' (for measurements).", visibility: .hidden))
    var tlsCipherSuites: String?

    func validate() throws {
        if (clientCertificate == nil) != (clientKey == nil) {
            throw ValidationError("--client-certificate and --client-key go together")
        }
    }

    var options: TLSClientOptions {
        var options = TLSClientOptions()
        options.certificateAuthorityFile = certificateAuthority
        options.clientCertificateFile = clientCertificate
        options.clientKeyFile = clientKey
        options.insecureSkipVerify = insecureSkipTlsVerify
        options.serverName = tlsServerName
        options.cipherList = tlsCipherSuites
        return options
    }
}

/// kube-apiserver's names for the relay's TLS settings.
struct RelayTLSOptions: ParsableArguments {
    @Option(help: "The relay's certificate (PEM, leaf first, then intermediates). With it, the listening port is TLS only.")
    var tlsCertFile: String?
    @Option(help: "The private key of --tls-cert-file (PEM).")
    var tlsPrivateKeyFile: String?
    @Option(help: "Require client certificates signed by this CA (PEM); the certificate's CN is the user, each O a group.")
    var clientCaFile: String?
    @Option(help: ArgumentHelp("TLS cipher suites to allow, OpenSSL names separated by ':' (for measurements).", visibility: .hidden))
    var tlsCipherSuites: String?

    func validate() throws {
        if (tlsCertFile == nil) != (tlsPrivateKeyFile == nil) {
            throw ValidationError("--tls-cert-file and --tls-private-key-file go together")
        }
        if clientCaFile != nil && tlsCertFile == nil {
            throw ValidationError("--client-ca-file needs --tls-cert-file and --tls-private-key-file")
        }
    }

    func makeContext() throws -> TLSContext? {
        guard let tlsCertFile, let tlsPrivateKeyFile else { return nil }
        return try TLSContext.server(certificateFile: tlsCertFile, privateKeyFile: tlsPrivateKeyFile,
                                     clientCAFile: clientCaFile, cipherList: tlsCipherSuites)
    }
}

/// Who may ask a listening server (relay, gateway): kube-apiserver's flag names.
struct ServerAccessOptions: ParsableArguments {
    @Option(help: "Bearer tokens, kube-apiserver's --token-auth-file CSV: token,user,uid[,\"group1,group2\"]. Requests without a known token are answered 401.")
    var tokenAuthFile: String?

    @Option(help: "Who may port-forward to which pods, YAML (allow: [{user: alice, namespaces: [default], pods: [\"web-*\"]}]); everything else is answered 403.")
    var authorizationFile: String?

    @Flag(help: "Listen beyond loopback without TLS and authentication anyway (prints a warning).")
    var insecure = false

    /// The access control, once the listen rule allows `listen`: beyond loopback without TLS
    /// and authentication, one line and exit (or a warning with `--insecure`).
    func makeAccess(listen: SocketAddress, tls: RelayTLSOptions) throws -> AccessControl {
        var access = AccessControl()
        access.tokens = try tokenAuthFile.map(TokenFile.init(contentsOf:))
        access.rules = try authorizationFile.map(AccessRules.init(contentsOf:))
        // A verified client certificate's CN and O are the caller (--client-ca-file).
        access.clientCertificates = tls.clientCaFile != nil
        // TLS with --tls-cert-file; client certificates authenticate too.
        switch ListenRule.check(listen: listen, tls: tls.tlsCertFile != nil, authenticates: access.authenticates, insecure: insecure) {
        case .fine: break
        case .warn(let line): standardError(line)
        case .refuse(let line): fail(line)
        }
        return access
    }
}

struct RelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Serve port-forward requests: enter each pod's network and copy bytes both ways.")

    @Option(help: "HOST:PORT to listen on.")
    var listen = "127.0.0.1:10250"

    @Option(help: "This node's name, as /proxy/nodes/NODE/... names it (default: the host name).")
    var node: String?

    @Option(help: "The pod registry, a YAML file.")
    var pods: String

    @Option(help: "How to reach a pod: native (setns + socket) or nsenter (nsenter + socat per connection).")
    var connector: ConnectorChoice = .native

    @Option(help: "Seconds to wait for a pod's port to accept.")
    var connectTimeout: Double = 5

    @OptionGroup(title: "TLS") var tlsOptions: RelayTLSOptions

    @OptionGroup(title: "Authentication and authorization") var accessOptions: ServerAccessOptions

    @OptionGroup(title: "Limits") var limitOptions: RelayLimitOptions

    @OptionGroup var io: IOOptions

    func run() throws {
        Process.ignoreBrokenPipes()
        let limits = Process.raiseOpenFileLimit()
        do {
            let registry = try loadRegistry(pods)
            guard let address = parseListenAddress(listen) else {
                throw ValidationError("invalid --listen \"\(listen)\": expected HOST:PORT")
            }
            let access = try accessOptions.makeAccess(listen: address, tls: tlsOptions)
            let reactor = try io.makeReactor()
            let connectorObject: Connector = connector == .native
                ? try NativeConnector(reactor: reactor, timeoutSeconds: connectTimeout)
                : NsenterConnector(reactor: reactor, timeoutSeconds: connectTimeout)
            let relay = try Relay(listen: address, node: node ?? hostName(), registry: registry,
                                  connector: connectorObject, reactor: reactor, limits: limitOptions.limits)
            relay.access = access
            if io.verbose { relay.log = standardError }
            relay.tls = try tlsOptions.makeContext()
            relay.pipes = io.makePipes()
            relay.start()
            do {
                _ = try SignalStop(reactor: reactor) { relay.stop() }
            } catch {
                standardError("warning: \(error): SIGINT and SIGTERM end the relay without GOAWAY")
            }
            let notReady = registry.notReady.isEmpty ? "" : ", \(registry.notReady.count) not ready"
            print("Relay listening on \(relay.address)\(relay.tlsEnabled ? " (TLS\(relay.clientCAConfigured ? ", client certificates required" : ""))" : "") (node \(relay.node), \(registry.pods.count) pods\(notReady), connector \(connectorObject.name), io \(reactor.name), open files \(limits.soft))")
            fflush(stdout)
            try reactor.run()
        } catch let error as ValidationError {
            throw error
        } catch {
            fail("\(error)")
        }
    }

}

/// `HOST:PORT` (`[::1]:PORT`; an empty host or `localhost` is 127.0.0.1).
func parseListenAddress(_ text: String) -> SocketAddress? {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
          (0...65535).contains(port) else { return nil }
    var host = String(text[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    if host.isEmpty || host == "localhost" { host = "127.0.0.1" }
    return SocketAddress(ip: host, port: port)
}

/// The pods file, each pod's network namespace checked: a pod whose namespace is missing or
/// wrong is kept (it may come up later; each stream checks again) and named on standard error,
/// one line each, so that a typo in the file shows at start rather than as 502s later.
func loadRegistry(_ path: String) throws -> PodRegistry {
    let registry = try PodRegistry(contentsOf: path).checkingNamespaces()
    for pod in registry.notReady {
        if case .notReady(let reason) = pod.readiness {
            standardError("warning: pod \(pod.qualifiedName): \(reason): not ready")
        }
    }
    return registry
}

func hostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    gethostname(&name, name.count)
    return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// SIGINT/SIGTERM end the relay: `onSignal` runs first, and the loop stops after a short grace
/// period, so that what it queued (GOAWAY frames) is written. Later signals change nothing.
final class SignalStop: CompletionHandler {
    let reactor: ReactorBackend
    private var watcher: SignalWatcher?

    /// Holds itself (through the watcher, then the grace timer) until the loop stops.
    init(reactor: ReactorBackend, onSignal: @escaping () -> Void) throws {
        self.reactor = reactor
        watcher = try SignalWatcher([SIGINT, SIGTERM], reactor: reactor) { _ in
            self.watcher?.stop()
            self.watcher = nil
            onSignal()
            _ = reactor.timer(nanoseconds: 200_000_000, handler: self, tag: 0)
        }
    }

    func complete(_ completion: Completion) { reactor.stop() }
}
