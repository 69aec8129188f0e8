import ArgumentParser
import HTTP2
import PortForward
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Where the client goes and as whom: the server, the kubeconfig's selection, the credentials,
/// TLS and the wire protocol, with kubectl's names. `forward` uses them; `bench` with a pod
/// argument hands them on to the `portforward forward` it starts (`arguments`).
struct ClusterOptions: ParsableArguments {
    @Option(help: "The relay's or API server's URL (overrides the kubeconfig's; default: $PORTFORWARD_SERVER, then the kubeconfig's cluster, then http://127.0.0.1:10250).")
    var server: String?

    @Option(help: "The kubeconfig file (default: $KUBECONFIG, merged, then ~/.kube/config).")
    var kubeconfig: String?

    @Option(help: "The kubeconfig context (default: its current-context).")
    var context: String?

    @Option(help: "The kubeconfig cluster to use instead of the context's.")
    var cluster: String?

    @Option(help: "The kubeconfig user to use instead of the context's.")
    var user: String?

    @Option(help: "Go through the API server's path for this node (/proxy/nodes/NODE/portForward/...).")
    var node: String?

    @Flag(help: "Ask on the pod's Kubernetes API URL (/api/v1/namespaces/NAMESPACE/pods/POD/portforward), as kubectl does.")
    var apiPath = false

    @Option(name: [.customShort("n"), .long], help: "The pod's namespace (default: the context's, then default).")
    var namespace: String?

    @Option(help: "What to speak to the server: h2 (our HTTP/2 protocol), websocket (SPDY/3.1 in a WebSocket, kubectl 1.31+'s), spdy (plain SPDY/3.1, kubectl 1.30's), or auto: h2 when the server offers it, else websocket, else spdy (default: auto).")
    var `protocol`: WireProtocol?

    // Optionals, so that a value given can be told from the default (the bench refuses them
    // where they would not be used); the defaults apply in `upgradeSeconds` and `keepalive`.
    @Option(help: "Seconds the whole upgrade exchange with the relay may take (default: 10).")
    var upgradeTimeout: Double?

    @Option(help: "Seconds of silence from the relay before a PING (0: no keepalive; default: 10).")
    var keepaliveInterval: Double?

    @Option(help: "Seconds to wait for the PING's answer before giving up on the relay (default: 10).")
    var keepaliveTimeout: Double?

    @OptionGroup(title: "TLS (an https:// server)") var tls: ClientTLSOptions

    @Option(help: "A bearer token, sent only over https:// (as kubectl: never in plain text); overrides the kubeconfig's.")
    var token: String?

    /// A file holding the bearer token, read at each dial: as --token, without the secret on the
    /// command line (the bench hands its --token to its forward child this way).
    @Option(help: ArgumentHelp("A file holding a bearer token, read at each connection; as --token.", visibility: .hidden))
    var tokenFile: String?

    var upgradeSeconds: Double { upgradeTimeout ?? 10 }

    /// --keepalive-interval and --keepalive-timeout, nil for no keepalive (an interval of 0).
    var keepalive: Keepalive? {
        let interval = keepaliveInterval ?? 10
        return interval > 0 ? Keepalive(interval: interval, timeout: keepaliveTimeout ?? 10) : nil
    }

    func validate() throws {
        if apiPath && node != nil { throw ValidationError("--api-path and --node name different URLs: give one") }
        if token != nil && tokenFile != nil { throw ValidationError("--token and --token-file are two tokens: give one") }
        if !(upgradeSeconds > 0) || !((keepaliveTimeout ?? 10) > 0) || !((keepaliveInterval ?? 10) >= 0) {
            throw ValidationError("--upgrade-timeout and --keepalive-timeout must be greater than 0, --keepalive-interval 0 or more")
        }
    }

    var wireProtocol: WireProtocol { `protocol` ?? .auto }

    /// The options given, as `forward` takes them (defaults left out), but for --token: the
    /// bench hands that on in a file (`ForwardRequest.token`), never on a command line.
    var arguments: [String] {
        var arguments: [String] = []
        func add(_ name: String, _ value: String?) { if let value { arguments += [name, value] } }
        func add(_ name: String, _ value: Double?) { if let value { arguments += [name, String(value)] } }
        add("--server", server)
        add("--kubeconfig", kubeconfig)
        add("--context", context)
        add("--cluster", cluster)
        add("--user", user)
        add("--node", node)
        if apiPath { arguments.append("--api-path") }
        add("--namespace", namespace)
        add("--protocol", `protocol`?.rawValue)
        add("--upgrade-timeout", upgradeTimeout)
        add("--keepalive-interval", keepaliveInterval)
        add("--keepalive-timeout", keepaliveTimeout)
        add("--certificate-authority", tls.certificateAuthority)
        add("--client-certificate", tls.clientCertificate)
        add("--client-key", tls.clientKey)
        if tls.insecureSkipTlsVerify { arguments.append("--insecure-skip-tls-verify") }
        add("--tls-server-name", tls.tlsServerName)
        add("--tls-cipher-suites", tls.tlsCipherSuites)
        add("--token-file", tokenFile)
        return arguments
    }

    /// The flags that only mean something to a client of a kubeconfig's server (all but
    /// --server and --node, which the bench's h2c mode takes too), by name, as given.
    var clientOnlyFlags: [String] {
        var given: [String] = []
        for (name, value) in [("--kubeconfig", kubeconfig), ("--context", context), ("--cluster", cluster), ("--user", user),
                              ("--namespace", namespace), ("--protocol", `protocol`?.rawValue), ("--token", token),
                              ("--token-file", tokenFile), ("--upgrade-timeout", upgradeTimeout.map { String($0) }),
                              ("--keepalive-interval", keepaliveInterval.map { String($0) }),
                              ("--keepalive-timeout", keepaliveTimeout.map { String($0) }),
                              ("--certificate-authority", tls.certificateAuthority), ("--client-certificate", tls.clientCertificate),
                              ("--client-key", tls.clientKey), ("--tls-server-name", tls.tlsServerName),
                              ("--tls-cipher-suites", tls.tlsCipherSuites)] where value != nil {
            given.append(name)
        }
        if apiPath { given.append("--api-path") }
        if tls.insecureSkipTlsVerify { given.append("--insecure-skip-tls-verify") }
        return given
    }

    /// The kubeconfig, as kubectl reads it, and the context, cluster and user chosen from it;
    /// nil when there is none and none was asked for (--server or $PORTFORWARD_SERVER say where to go).
    func selection() throws -> Kubeconfig.Selection? {
        var environment: [String: String] = [:]
        for name in ["KUBECONFIG", "HOME"] {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        let config = try Kubeconfig.load(explicit: kubeconfig, environment: environment)
        let asked = context != nil || cluster != nil || user != nil || kubeconfig != nil
        guard asked || config.currentContext != nil else { return nil }
        return try config.select(.init(context: context, cluster: cluster, user: user, namespace: namespace))
    }

    /// The server the client goes to: --server, $PORTFORWARD_SERVER, the kubeconfig's, or a local relay.
    func serverURL(_ selection: Kubeconfig.Selection?) -> String {
        let fromEnvironment = getenv("PORTFORWARD_SERVER").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        return server ?? fromEnvironment ?? selection?.cluster.server ?? "http://127.0.0.1:10250"
    }
}
