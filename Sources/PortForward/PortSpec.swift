/// `[LOCAL:]REMOTE`, as `oc port-forward` takes it: `5000`, `6000:5000`, `:5000`, `0:5000`.
public struct PortSpec: Equatable, Sendable, CustomStringConvertible {
    /// 0: pick a free port.
    public var local: Int
    public var remote: Int

    public init(local: Int, remote: Int) {
        self.local = local
        self.remote = remote
    }

    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public init(parsing text: String) throws {
        func port(_ part: Substring, _ what: String, allowZero: Bool) throws -> Int {
            guard !part.isEmpty, part.allSatisfy({ $0.isASCII && $0.isNumber }), part.count <= 5, let value = Int(part) else {
                throw ParseError(description: "invalid port specification \"\(text)\": \(what) port \"\(part)\" is not a number")
            }
            guard value <= 65535, value > 0 || allowZero else {
                throw ParseError(description: "invalid port specification \"\(text)\": \(what) port \(value) is out of range (1-65535)")
            }
            return value
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        switch parts.count {
        case 1:
            let remote = try port(parts[0], "remote", allowZero: false)
            self.init(local: remote, remote: remote)
        case 2:
            let local = parts[0].isEmpty ? 0 : try port(parts[0], "local", allowZero: true)
            self.init(local: local, remote: try port(parts[1], "remote", allowZero: false))
        default:
            throw ParseError(description: "invalid port specification \"\(text)\": expected [LOCAL:]REMOTE")
        }
    }

    /// Parses every spec and refuses a local port named twice.
    public static func parseAll(_ texts: [String]) throws -> [PortSpec] {
        if texts.isEmpty { throw ParseError(description: "at least one port specification is required, e.g. 8080 or 6000:5000") }
        let specs = try texts.map(PortSpec.init(parsing:))
        var seen = Set<Int>()
        for spec in specs where spec.local != 0 {
            if !seen.insert(spec.local).inserted {
                throw ParseError(description: "local port \(spec.local) is given more than once")
            }
        }
        return specs
    }

    public var description: String { "\(local):\(remote)" }
}

/// The target of a port-forward request, as its path names it:
/// `/proxy/nodes/<node>/portForward/<namespace>/<pod>` (the API server's proxy to a node),
/// `/portForward/<namespace>/<pod>` (the node's own), or
/// `/api/v1/namespaces/<namespace>/pods/<pod>/portforward` (the API server's pod subresource, the
/// URL kubectl asks on).
public struct ForwardPath: Equatable, Sendable, CustomStringConvertible {
    public var node: String?
    public var namespace: String
    public var pod: String
    /// Whether the path is the pod subresource (`node` is then nil: that URL names no node).
    public var subresource: Bool

    public init(node: String? = nil, namespace: String, pod: String, subresource: Bool = false) {
        self.node = subresource ? nil : node
        self.namespace = namespace
        self.pod = pod
        self.subresource = subresource
    }

    public init?(parsing path: String) {
        // Split the bytes, as a URL path is split: split as Characters, "/" followed by a
        // combining mark is one Character and no separator, and a part could hold a "/".
        let withoutQuery = Array(path.utf8.prefix { $0 != UInt8(ascii: "?") })
        let parts = withoutQuery.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        // "" "proxy" "nodes" node "portForward" ns pod, or "" "portForward" ns pod, or
        // "" "api" "v1" "namespaces" ns "pods" pod "portforward"
        if parts.count == 7, parts[0].isEmpty, parts[1] == "proxy", parts[2] == "nodes", parts[4] == "portForward",
           !parts[3].isEmpty, !parts[5].isEmpty, !parts[6].isEmpty {
            self.init(node: parts[3], namespace: parts[5], pod: parts[6])
        } else if parts.count == 4, parts[0].isEmpty, parts[1] == "portForward", !parts[2].isEmpty, !parts[3].isEmpty {
            self.init(node: nil, namespace: parts[2], pod: parts[3])
        } else if parts.count == 8, parts[0].isEmpty, parts[1] == "api", parts[2] == "v1", parts[3] == "namespaces",
                  parts[5] == "pods", parts[7] == "portforward", !parts[4].isEmpty, !parts[6].isEmpty {
            self.init(namespace: parts[4], pod: parts[6], subresource: true)
        } else {
            return nil
        }
    }

    public var path: String {
        if subresource { return "/api/v1/namespaces/\(namespace)/pods/\(pod)/portforward" }
        if let node { return "/proxy/nodes/\(node)/portForward/\(namespace)/\(pod)" }
        return "/portForward/\(namespace)/\(pod)"
    }

    public var description: String { path }
}
