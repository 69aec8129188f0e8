import ArgumentParser
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

struct GatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Serve the pods of several node relays from one address, as an API server does.",
        discussion: """
            Each node relay gets ONE HTTP/2 connection from the gateway; every forwarded connection to a pod \
            on that node is a stream of it, whatever protocol the client spoke. The nodes file:
              nodes:
                - {name: node-a, address: 10.89.0.2:10250}
                - {name: node-b, address: "https://10.89.0.3:10250"}
            """)

    @Option(help: "HOST:PORT to listen on.")
    var listen = "127.0.0.1:6443"

    @Option(help: "The node relays, a YAML file (nodes: [{name: node-a, address: HOST:PORT}]).")
    var nodes: String

    @Option(help: "Seconds between two reads of each node relay's pod list.")
    var refreshInterval: Double = 2

    @Option(help: "Seconds to wait for a node relay's connection, and for its answer to a stream.")
    var connectTimeout: Double = 5

    @Option(help: "Seconds the streams open at SIGTERM may take to finish (after a GOAWAY to every client and node).")
    var shutdownTimeout: Double = 10

    @Option(help: "A bearer token sent to https:// node relays.")
    var nodeToken: String?

    @Option(help: "The CA (PEM) https:// node relays' certificates must chain to (default: the system's).")
    var nodeCertificateAuthority: String?

    @Option(help: "The gateway's client certificate (PEM) for node relays that ask for one (--client-ca-file).")
    var nodeClientCertificate: String?

    @Option(help: "The private key of --node-client-certificate (PEM).")
    var nodeClientKey: String?

    @Flag(help: "Do not check node relays' certificates (insecure).")
    var nodeInsecureSkipTlsVerify = false

    @OptionGroup(title: "TLS") var tlsOptions: RelayTLSOptions

    @OptionGroup(title: "Authentication and authorization") var accessOptions: ServerAccessOptions

    @OptionGroup(title: "Limits") var limitOptions: RelayLimitOptions

    @OptionGroup var io: IOOptions

    func validate() throws {
        if (nodeClientCertificate == nil) != (nodeClientKey == nil) {
            throw ValidationError("--node-client-certificate and --node-client-key go together")
        }
        guard refreshInterval >= 0.1, connectTimeout > 0, shutdownTimeout >= 0 else {
            throw ValidationError("--refresh-interval must be at least 0.1, --connect-timeout above 0")
        }
    }

    func run() throws {
        Process.ignoreBrokenPipes()
        let files = Process.raiseOpenFileLimit()
        do {
            let entries = try NodesFile.load(nodes)
            guard let address = parseListenAddress(listen) else {
                throw ValidationError("invalid --listen \"\(listen)\": expected HOST:PORT")
            }
            let access = try accessOptions.makeAccess(listen: address, tls: tlsOptions)
            if nodeToken != nil && !entries.contains(where: \.secure) {
                standardError("warning: --node-token is not sent: no node address is https:// (it would travel in plain text)")
            }
            var settings = GatewaySettings()
            settings.refreshSeconds = refreshInterval
            settings.connectTimeoutSeconds = connectTimeout
            settings.token = nodeToken
            settings.tls.certificateAuthorityFile = nodeCertificateAuthority
            settings.tls.clientCertificateFile = nodeClientCertificate
            settings.tls.clientKeyFile = nodeClientKey
            settings.tls.insecureSkipVerify = nodeInsecureSkipTlsVerify
            let reactor = try io.makeReactor()
            let gateway = try Gateway(listen: address, nodes: entries, reactor: reactor, limits: limitOptions.limits, settings: settings)
            let relay = gateway.relay
            relay.access = access
            if io.verbose { relay.log = standardError }
            relay.tls = try tlsOptions.makeContext()
            relay.pipes = io.makePipes()
            gateway.onReady = {
                let reachable = gateway.links.filter(\.reachable).count
                print("Gateway listening on \(relay.address)\(relay.tlsEnabled ? " (TLS)" : "") (\(entries.count) nodes, \(reachable) reachable, "
                      + "\(relay.registry.pods.count + relay.conflicts.values.map(\.count).reduce(0, +)) pods, io \(reactor.name), open files \(files.soft))")
                fflush(stdout)
            }
            gateway.start()
            var stopping = false
            let watcher = try? SignalWatcher([SIGINT, SIGTERM], reactor: reactor) { _ in
                guard !stopping else { return }
                stopping = true
                standardError("Draining: GOAWAY to every client and node; open streams have \(shutdownTimeout) s")
                gateway.drain(deadlineSeconds: shutdownTimeout)
            }
            if watcher == nil { standardError("warning: cannot watch SIGINT and SIGTERM: they end the gateway without GOAWAY") }
            try reactor.run()
            withExtendedLifetime(watcher) {}
        } catch let error as ValidationError {
            throw error
        } catch {
            fail("\(error)")
        }
    }
}
