import Reactor
import Yams

/// A node relay the gateway routes to: its name (as `/proxy/nodes/<node>/...` and a pod's
/// `spec.nodeName` say it) and where its relay listens.
public struct NodeEntry: Sendable {
    public var name: String
    /// Where the node relay listens; `secure`: `https://` (TLS with ALPN h2), else h2c with prior knowledge.
    public var address: SocketAddress
    public var secure: Bool
    /// The host as the file gives it (the name a TLS certificate is checked against).
    public var host: String

    public init(name: String, address: SocketAddress, secure: Bool = false, host: String? = nil) {
        self.name = name
        self.address = address
        self.secure = secure
        self.host = host ?? address.ip
    }

    public var url: String { "\(secure ? "https" : "http")://\(address)" }
}

/// The gateway's nodes file:
/// ```yaml
/// nodes:
///   - {name: node-a, address: 10.89.0.2:10250}
///   - {name: node-b, address: "https://10.89.0.3:10250"}
/// ```
/// A node's name is a DNS subdomain (as Kubernetes node names are); its address is `HOST:PORT`,
/// optionally after `http://` or `https://`, without a path; a host name is resolved once, here.
public enum NodesFile {
    /// A larger file is refused unread.
    public static let maximumFileSize = 1 << 20
    /// More nodes than this are refused (each holds a connection and a pod list).
    public static let maximumNodes = 5_000

    public static func load(_ path: String) throws -> [NodeEntry] {
        try parse(ConfigFile.read(path, kind: "nodes file", maximumSize: maximumFileSize), source: path)
    }

    public static func parse(_ text: String, source: String = "nodes file") throws -> [NodeEntry] {
        func problem(_ node: Node?, _ what: String) -> ConfigFileError {
            ConfigFileError(description: "\(source)\(node?.lineSuffix ?? ""): \(what)")
        }
        let document = try ConfigFile.compose(text, source: source, needs: "a nodes file needs 3")
        guard case .mapping(let root)? = document, let list = root["nodes"] else {
            throw problem(document, "expected a top-level 'nodes:' list")
        }
        guard case .sequence(let entries) = list, !entries.isEmpty else {
            throw problem(list, "'nodes' must be a list of at least one node")
        }
        guard entries.count <= maximumNodes else { throw problem(list, "more than \(maximumNodes) nodes") }
        var nodes: [NodeEntry] = []
        for (index, entry) in entries.enumerated() {
            let prefix = "node #\(index + 1)"
            guard case .mapping(let mapping) = entry else {
                throw problem(entry, "\(prefix): must be a mapping such as {name: node-a, address: 10.89.0.2:10250}")
            }
            for (key, _) in mapping where !["name", "address"].contains(key.string ?? "") {
                throw problem(key, "\(prefix): unknown field \(goQuoted(key.string ?? "?", 64)) (known: name, address)")
            }
            guard let nameNode = mapping["name"], case .scalar(let nameScalar) = nameNode else {
                throw problem(entry, "\(prefix): has no name")
            }
            let name = nameScalar.string
            guard KubernetesName.isDNSSubdomain(name) else {
                throw problem(nameNode, "\(prefix): name \(goQuoted(name, 64)) is not a valid node name (a DNS subdomain)")
            }
            guard let addressNode = mapping["address"], case .scalar(let addressScalar) = addressNode else {
                throw problem(entry, "\(prefix): node \(name) has no address")
            }
            let text = addressScalar.string
            var rest = Substring(text)
            var secure = false
            if rest.hasPrefix("https://") {
                secure = true
                rest = rest.dropFirst(8)
            } else if rest.hasPrefix("http://") {
                rest = rest.dropFirst(7)
            }
            if let slash = rest.firstIndex(of: "/") {
                // The gateway asks a node relay for /portForward/... and /api/v1/pods at its root;
                // a path (a node behind a prefixing proxy) would be dropped without a word.
                guard rest[slash...] == "/" else {
                    throw problem(addressNode, "\(prefix): address \(goQuoted(text, 256)) of node \(name) has a path: "
                                  + "a node relay is asked at its root; give HOST:PORT, http://HOST:PORT or https://HOST:PORT")
                }
                rest = rest[..<slash]
            }
            var host = ""
            var port = -1
            if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
                host = String(rest[rest.index(after: rest.startIndex)..<close])
                let after = rest[rest.index(after: close)...]
                if after.hasPrefix(":") { port = Int(after.dropFirst()) ?? -1 }
            } else if let colon = rest.lastIndex(of: ":") {
                host = String(rest[..<colon])
                port = Int(rest[rest.index(after: colon)...]) ?? -1
            }
            guard !host.isEmpty, (1...65535).contains(port) else {
                throw problem(addressNode, "\(prefix): address \(goQuoted(text, 256)) of node \(name) is not HOST:PORT")
            }
            guard let address = SocketAddress(ip: host, port: port) ?? SocketAddress.resolve(host, port: port).first else {
                throw problem(addressNode, "\(prefix): cannot resolve \(goQuoted(host, 256)) (node \(name))")
            }
            if let earlier = nodes.first(where: { $0.name == name }) {
                throw problem(nameNode, "\(prefix): node \(name) is listed twice (its first address: \(earlier.address))")
            }
            nodes.append(NodeEntry(name: name, address: address, secure: secure, host: host))
        }
        return nodes
    }
}
