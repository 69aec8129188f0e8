import Yams

/// A pod the relay can forward to, and how to reach its network.
public struct Pod: Equatable, Sendable {
    public var namespace: String
    public var name: String
    /// A network namespace file (`/run/netns/web`).
    public var netns: String?
    /// A process whose network namespace is the pod's.
    public var pid: Int?

    public init(namespace: String, name: String, netns: String? = nil, pid: Int? = nil) {
        self.namespace = namespace
        self.name = name
        self.netns = netns
        self.pid = pid
    }

    /// The namespace file to enter; nil: the relay's own network.
    public var networkNamespacePath: String? {
        if let netns { return netns }
        if let pid { return "/proc/\(pid)/ns/net" }
        return nil
    }

    public var qualifiedName: String { "\(namespace)/\(name)" }
}

/// The pods file:
/// ```yaml
/// pods:
///   - {namespace: default, name: web, netns: /run/netns/web}
///   - {namespace: default, name: db, pid: 4242}
///   - {namespace: default, name: local}
/// ```
public struct PodRegistry: Sendable {
    public private(set) var pods: [String: Pod] = [:]

    public struct LoadError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public init(_ pods: [Pod] = []) {
        for pod in pods { self.pods[pod.qualifiedName] = pod }
    }

    public init(yaml text: String, source: String = "pods file") throws {
        let document: Any?
        do { document = try Yams.load(yaml: text) } catch {
            throw LoadError(description: "\(source): not valid YAML: \(error)")
        }
        guard let root = document as? [String: Any], let list = root["pods"] else {
            throw LoadError(description: "\(source): expected a top-level 'pods:' list")
        }
        guard let entries = list as? [Any] else {
            // `pods:` with nothing after it: no pods yet.
            if "\(type(of: list))".contains("Null") { self.init(); return }
            throw LoadError(description: "\(source): 'pods' must be a list")
        }
        var pods: [Pod] = []
        for (index, entry) in entries.enumerated() {
            guard let fields = entry as? [String: Any] else {
                throw LoadError(description: "\(source): pod #\(index + 1) must be a mapping")
            }
            let known: Set<String> = ["namespace", "name", "netns", "pid"]
            if let unknown = fields.keys.first(where: { !known.contains($0) }) {
                throw LoadError(description: "\(source): pod #\(index + 1) has an unknown field '\(unknown)'")
            }
            guard let name = fields["name"].map({ "\($0)" }), !name.isEmpty else {
                throw LoadError(description: "\(source): pod #\(index + 1) has no name")
            }
            let namespace = fields["namespace"].map { "\($0)" } ?? "default"
            var pid: Int?
            if let value = fields["pid"] {
                guard let number = value as? Int, number > 0 else {
                    throw LoadError(description: "\(source): pod \(namespace)/\(name): pid must be a positive number")
                }
                pid = number
            }
            let netns = fields["netns"].map { "\($0)" }
            if netns != nil && pid != nil {
                throw LoadError(description: "\(source): pod \(namespace)/\(name): give netns or pid, not both")
            }
            let pod = Pod(namespace: namespace, name: name, netns: netns, pid: pid)
            if pods.contains(where: { $0.qualifiedName == pod.qualifiedName }) {
                throw LoadError(description: "\(source): pod \(pod.qualifiedName) is listed twice")
            }
            pods.append(pod)
        }
        self.init(pods)
    }

    public func pod(namespace: String, name: String) -> Pod? { pods["\(namespace)/\(name)"] }
}

