import CLinuxShim
import HTTP2
import Reactor
import Yams
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A pod the relay can forward to, and how to reach its network.
public struct Pod: Equatable, Sendable {
    public var namespace: String
    public var name: String
    /// A network namespace file (`/run/netns/web`).
    public var netns: String?
    /// A process whose network namespace is the pod's.
    public var pid: Int?
    /// Whether its network namespace was there when the registry was checked. Only what start-up
    /// reports: every stream checks again, since a pod may come up (or go) after the relay.
    public var readiness: Readiness
    /// What the pod says it serves (the pods file's optional `ports:`), as a Pod's
    /// `spec.containers[].ports` says it: kubectl resolves a named port (`pod/web http`) from it.
    public var ports: [ContainerPort]
    /// A gateway's pods: the node whose relay reported the pod (nil: a relay's own pod, on its node).
    public var node: String?
    /// A gateway's pods: the phase the node relay reported, or `Unknown` while the node cannot be
    /// reached (nil: a relay's own pod, Running when its network namespace can be entered).
    public var phase: String?

    public enum Readiness: Equatable, Sendable {
        /// Parsed, not checked against this host.
        case unchecked
        case ready
        /// The one line that says why (`/run/netns/web does not exist`).
        case notReady(reason: String)
    }

    public init(namespace: String, name: String, netns: String? = nil, pid: Int? = nil, readiness: Readiness = .unchecked,
                ports: [ContainerPort] = [], node: String? = nil, phase: String? = nil) {
        self.node = node
        self.phase = phase
        self.namespace = namespace
        self.name = name
        self.netns = netns
        self.pid = pid
        self.readiness = readiness
        self.ports = ports
    }

    /// The namespace file to enter; nil: the relay's own network.
    public var networkNamespacePath: String? {
        if let netns { return netns }
        if let pid { return "/proc/\(pid)/ns/net" }
        return nil
    }

    public var qualifiedName: String { "\(namespace)/\(name)" }

    public var ready: Bool {
        if case .notReady = readiness { return false }
        return true
    }
}

/// A port a pod's container declares (Kubernetes's `ContainerPort`, without `hostPort`/`hostIP`,
/// which mean nothing to a relay).
public struct ContainerPort: Equatable, Sendable {
    public var name: String?
    public var containerPort: Int
    /// `TCP`, `UDP` or `SCTP`, spelled as Kubernetes spells them.
    public var `protocol`: String

    public static let protocols = ["TCP", "UDP", "SCTP"]

    public init(name: String? = nil, containerPort: Int, protocol: String = "TCP") {
        self.name = name
        self.containerPort = containerPort
        self.protocol = `protocol`
    }
}

/// The pods file:
/// ```yaml
/// pods:
///   - {namespace: default, name: web, netns: /run/netns/web}
///   - {namespace: default, name: db, pid: 4242}
///   - {namespace: default, name: local}
///   - {namespace: default, name: api, ports: [{name: http, containerPort: 8080}]}
/// ```
/// Names are checked as Kubernetes checks them: a namespace is a DNS label, a pod's name a DNS
/// subdomain (so that every pod listed can be named in a request path).
public struct PodRegistry: Sendable {
    public private(set) var pods: [String: Pod] = [:]

    /// A pods file larger than this is refused unread: far more pods than a node runs, and
    /// the relay would hold it all in memory while parsing.
    public static let maximumFileSize = 16 << 20

    public typealias LoadError = ConfigFileError

    public init(_ pods: [Pod] = []) {
        for pod in pods { self.pods[pod.qualifiedName] = pod }
    }

    /// Reads and parses the pods file at `path`: a regular file of at most `maximumFileSize`
    /// bytes of UTF-8 (`ConfigFile.read`).
    public init(contentsOf path: String) throws {
        try self.init(yaml: ConfigFile.read(path, kind: "pods file", maximumSize: Self.maximumFileSize), source: path)
    }

    public init(yaml text: String, source: String = "pods file") throws {
        let document = try ConfigFile.compose(text, source: source, needs: "a pods file needs 3")
        guard case .mapping(let root)? = document, let list = root["pods"] else {
            throw LoadError(description: "\(source): expected a top-level 'pods:' list")
        }
        let entries: [Node]
        switch list {
        case .sequence(let sequence): entries = Array(sequence)
        // `pods:` with nothing after it: no pods yet.
        case .scalar where list.tagName == .null: entries = []
        default: throw LoadError(description: "\(source)\(list.lineSuffix): 'pods' must be a list")
        }
        var pods: [Pod] = []
        var seen: [String: Int] = [:]
        for (index, entry) in entries.enumerated() {
            let pod = try Entry(source: source, number: index + 1).pod(entry)
            if let first = seen[pod.qualifiedName] {
                throw LoadError(description: "\(source)\(entry.lineSuffix): pod #\(index + 1): pod \(pod.qualifiedName) is listed twice (first as pod #\(first))")
            }
            seen[pod.qualifiedName] = index + 1
            pods.append(pod)
        }
        self.init(pods)
    }

    public func pod(namespace: String, name: String) -> Pod? { pods["\(namespace)/\(name)"] }

    /// The registry with every pod's network namespace checked on this host now (without
    /// blocking: see `NetworkNamespace.open`). A pod whose namespace is missing or wrong is kept,
    /// marked not ready.
    public func checkingNamespaces() -> PodRegistry {
        var checked = self
        for (key, pod) in pods {
            var pod = pod
            if let path = pod.networkNamespacePath, let problem = NetworkNamespace.check(path) {
                pod.readiness = .notReady(reason: problem.description)
            } else {
                pod.readiness = .ready
            }
            checked.pods[key] = pod
        }
        return checked
    }

    /// The pods found not ready, by name.
    public var notReady: [Pod] {
        pods.values.filter { !$0.ready }.sorted { $0.qualifiedName < $1.qualifiedName }
    }
}

/// One entry of the `pods:` list, checked field by field; every problem is thrown as
/// "FILE:LINE: pod #N: WHAT".
private struct Entry {
    let source: String
    let number: Int

    static let fields: Set<String> = ["namespace", "name", "netns", "pid", "ports"]
    static let portFields: Set<String> = ["name", "containerPort", "protocol"]

    func pod(_ entry: Node) throws -> Pod {
        guard case .mapping(let mapping) = entry else {
            throw problem(entry, "must be a mapping such as {namespace: default, name: web, netns: /run/netns/web}, not \(describe(entry))")
        }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            let field = key.scalar?.string ?? describe(key)
            guard Self.fields.contains(field) else {
                throw problem(key, "unknown field \(quoted(field)) (known: name, namespace, netns, pid, ports)")
            }
            guard values[field] == nil else { throw problem(key, "field '\(field)' is given twice") }
            values[field] = value
        }
        guard let nameNode = values["name"] else { throw problem(entry, "has no name") }
        let name = try string("name", nameNode)
        guard KubernetesName.isDNSSubdomain(name) else {
            throw problem(nameNode, "name \(quoted(name)) is not a valid pod name: Kubernetes pod names are DNS subdomains, "
                          + "at most 253 lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit")
        }
        var namespace = "default"
        if let namespaceNode = values["namespace"] {
            namespace = try string("namespace", namespaceNode)
            guard KubernetesName.isDNSLabel(namespace) else {
                throw problem(namespaceNode, "namespace \(quoted(namespace)) is not a valid namespace: Kubernetes namespaces are DNS labels, "
                              + "at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
            }
        }
        var netns: String?
        if let netnsNode = values["netns"] {
            let path = try string("netns", netnsNode)
            guard path.hasPrefix("/"), !path.utf8.contains(0), path.utf8.count < PATH_MAX else {
                throw problem(netnsNode, "netns must be an absolute path (such as /run/netns/web), not \(quoted(path))")
            }
            netns = path
        }
        var pid: Int?
        if let pidNode = values["pid"] {
            // Read here, decimal or 0x hex, not with Yams's `int`: that also reads YAML 1.1's
            // sexagesimal form (`1:30`) and traps when one overflows (a fuzz finding:
            // `pid: 4000000000000000000:4` crashed the relay at start).
            guard pidNode.tagName == .int, let number = pidNode.scalar.flatMap({ Self.processID($0.string) }) else {
                throw problem(pidNode, "pid must be a positive integer (a process id), not \(describe(pidNode))")
            }
            pid = number
        }
        if netns != nil && pid != nil {
            throw problem(entry, "give netns or pid, not both")
        }
        let ports = try values["ports"].map(containerPorts) ?? []
        return Pod(namespace: namespace, name: name, netns: netns, pid: pid, ports: ports)
    }

    /// `ports:`, checked as Kubernetes checks a pod's container ports (names unique in the pod),
    /// since they are served to kubectl as they are.
    private func containerPorts(_ node: Node) throws -> [ContainerPort] {
        switch node {
        case .sequence(let sequence):
            var ports: [ContainerPort] = []
            for (index, item) in sequence.enumerated() {
                let port = try containerPort(item, number: index + 1)
                if let name = port.name, ports.contains(where: { $0.name == name }) {
                    throw problem(item, "ports #\(index + 1): port name \(quoted(name)) is given twice")
                }
                ports.append(port)
            }
            return ports
        case .scalar where node.tagName == .null: return []
        default: throw problem(node, "ports must be a list such as [{name: http, containerPort: 8080}], not \(describe(node))")
        }
    }

    private func containerPort(_ node: Node, number: Int) throws -> ContainerPort {
        let what = "ports #\(number)"
        guard case .mapping(let mapping) = node else {
            throw problem(node, "\(what) must be a mapping such as {name: http, containerPort: 8080, protocol: TCP}, not \(describe(node))")
        }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            let field = key.scalar?.string ?? describe(key)
            guard Self.portFields.contains(field) else {
                throw problem(key, "\(what): unknown field \(quoted(field)) (known: name, containerPort, protocol)")
            }
            guard values[field] == nil else { throw problem(key, "\(what): field '\(field)' is given twice") }
            values[field] = value
        }
        guard let numberNode = values["containerPort"] else { throw problem(node, "\(what) has no containerPort") }
        guard numberNode.tagName == .int, let text = numberNode.scalar?.string, text.utf8.count <= 5,
              text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let port = Int(text), (1...65535).contains(port) else {
            throw problem(numberNode, "\(what): containerPort must be a number from 1 to 65535, not \(describe(numberNode))")
        }
        var name: String?
        if let nameNode = values["name"] {
            let text = try string("name", nameNode)
            guard KubernetesName.isPortName(text) else {
                throw problem(nameNode, "\(what): port name \(quoted(text)) is not valid: Kubernetes port names are at most 15 lowercase "
                              + "letters, digits and '-', with at least one letter, not starting or ending with '-' nor holding '--'")
            }
            name = text
        }
        var portProtocol = "TCP"
        if let protocolNode = values["protocol"] {
            portProtocol = try string("protocol", protocolNode)
            guard ContainerPort.protocols.contains(portProtocol) else {
                throw problem(protocolNode, "\(what): protocol must be TCP, UDP or SCTP, not \(quoted(portProtocol))")
            }
        }
        return ContainerPort(name: name, containerPort: port, protocol: portProtocol)
    }

    /// A process id written in decimal or 0x hex, 1 to Int32.max; nil otherwise.
    static func processID(_ text: String) -> Int? {
        let hex = text.hasPrefix("0x")
        let digits = hex ? Substring(text.dropFirst(2)) : Substring(text)
        guard !digits.isEmpty, digits.utf8.count <= 10, let value = Int(digits, radix: hex ? 16 : 10),
              (1...Int(Int32.max)).contains(value) else { return nil }
        return value
    }

    /// A field that must be a string: null, numbers, booleans (`no`, `on`) and lists are refused
    /// rather than turned into text, so that `name: ~` is not a pod called "<null>".
    private func string(_ field: String, _ node: Node) throws -> String {
        guard case .scalar(let scalar) = node, node.tagName == .str else {
            var hint = ""
            if case .scalar(let scalar) = node, node.tagName != .null {
                hint = " (quote it if you mean the text: \"\(scalar.string)\")"
            }
            throw problem(node, "\(field) must be a string, not \(describe(node))\(hint)")
        }
        return scalar.string
    }

    private func problem(_ node: Node, _ what: String) -> PodRegistry.LoadError {
        PodRegistry.LoadError(description: "\(source)\(node.lineSuffix): pod #\(number): \(what)")
    }

    private func describe(_ node: Node) -> String { node.described }
}

/// Kubernetes's rules for object names (k8s.io/apimachinery/pkg/util/validation).
enum KubernetesName {
    /// RFC 1123 label, as for namespaces: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
    static func isDNSLabel(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.count <= 63 && isLabel(bytes[...])
    }

    /// RFC 1123 subdomain, as for pod names: labels joined by dots, at most 253 bytes in all
    /// (Kubernetes does not limit each label to 63 here, so neither do we).
    static func isDNSSubdomain(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.count <= 253
            && bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).allSatisfy(isLabel)
    }

    /// IANA service name, as for port names (`IsValidPortName`): at most 15 bytes of
    /// `[-a-z0-9]`, at least one letter, no '-' at either end and no "--".
    static func isPortName(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 15, bytes.first != UInt8(ascii: "-"), bytes.last != UInt8(ascii: "-") else { return false }
        guard bytes.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "-") }),
              bytes.contains(where: { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) }) else { return false }
        return !text.contains("--")
    }

    private static func isLabel(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard let first = bytes.first, let last = bytes.last, isAlphanumeric(first), isAlphanumeric(last) else { return false }
        return bytes.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "-") }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}

/// A value as it may appear in a one-line message: escaped (no newline can split the line) and
/// cut short (a megabyte-long name is not repeated whole).
func quoted(_ text: String) -> String {
    let limit = 64
    if text.count <= limit { return String(reflecting: text) }
    return String(reflecting: String(text.prefix(limit))) + "..."
}

extension Node {
    /// The resolved type (`tag:yaml.org,2002:str`, `...:int`, `...:null`); Yams keeps `Tag.name` internal.
    var tagName: Tag.Name { Tag.Name(rawValue: tag.description) }

    /// ":LINE" after the file's name in a message (nothing for a node made in code).
    var lineSuffix: String { mark.map { ":\($0.line)" } ?? "" }
}
