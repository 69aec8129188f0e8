import Yams

/// What `kubectl port-forward TYPE/NAME [LOCAL:]REMOTE...` takes, read as kubectl reads it, and
/// the pod it names as the API server describes it. Values only: the client asks the server.

/// `NAME`, `pod/NAME`, `pods/NAME` or `po/NAME`. kubectl also takes services, deployments and
/// other owners of pods (it picks one of their pods); this client forwards to pods only and says so.
public enum PodArgument {
    public struct Unsupported: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    public static func name(_ argument: String) throws -> String {
        guard let slash = argument.firstIndex(of: "/") else {
            guard !argument.isEmpty else { throw Unsupported(description: "a pod name is required") }
            return argument
        }
        let kind = argument[..<slash].lowercased()
        let name = String(argument[argument.index(after: slash)...])
        switch kind {
        case "pod", "pods", "po":
            guard !name.isEmpty, !name.contains("/") else { throw Unsupported(description: "invalid pod name \"\(argument)\"") }
            return name
        default:
            throw Unsupported(description: "\"\(kind)/\(name)\": portforward forwards to pods only (pod/NAME or NAME); "
                + "kubectl picks a pod of a \(kind) for you: name that pod here")
        }
    }
}

/// `[LOCAL:]REMOTE` where REMOTE may be a container port's name (`8080:http`, `http`, `:http`).
public struct PortRequest: Equatable, Sendable {
    public enum Remote: Equatable, Sendable {
        case number(Int)
        case name(String)
    }

    /// nil: the same as the remote port (`5000`, or a named port's number); 0: any free port.
    public var local: Int?
    public var remote: Remote

    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let last = parts.last, !last.isEmpty else {
            throw PortSpec.ParseError(description: "invalid port specification \"\(text)\": expected [LOCAL:]REMOTE")
        }
        if last.allSatisfy({ $0.isASCII && $0.isNumber }) {
            // A number: PortSpec's rules and messages.
            let spec = try PortSpec(parsing: text)
            local = parts.count == 2 ? spec.local : nil
            remote = .number(spec.remote)
            return
        }
        // IANA service names (what a container port's name may be): letters, digits, '-', at most 15.
        // Kubernetes' IsValidPortName: at most 15, lowercase letters, digits and '-', at least one
        // letter, no '-' at either end nor two together.
        guard last.count <= 15, last.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }),
              last.contains(where: \.isLetter), !last.hasPrefix("-"), !last.hasSuffix("-"), !last.contains("--") else {
            throw PortSpec.ParseError(description: "invalid port specification \"\(text)\": remote port \"\(last)\" is neither a number nor a port name")
        }
        remote = .name(String(last))
        if parts.count == 2 {
            let given = parts[0]
            if given.isEmpty {
                local = 0
            } else {
                guard given.count <= 5, given.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(given), number <= 65535 else {
                    throw PortSpec.ParseError(description: "invalid port specification \"\(text)\": local port \"\(given)\" is not a number in 0-65535")
                }
                local = number
            }
        }
    }

    /// The numbers, a named port looked up in the pod's containers (kubectl's rule: `http` is
    /// forwarded from the same local port number as the container port it names).
    public func resolve(in pod: PodDescription) throws -> PortSpec {
        switch remote {
        case .number(let number):
            return PortSpec(local: local ?? number, remote: number)
        case .name(let name):
            guard let number = pod.ports.first(where: { $0.name == name })?.number else {
                throw PodDescription.Problem(description: "Pod '\(pod.name)' does not have a named port '\(name)'")
            }
            return PortSpec(local: local ?? number, remote: number)
        }
    }
}

/// A Pod object as the API server returns it (`GET /api/v1/namespaces/NS/pods/NAME`): what a
/// port-forward needs from it.
public struct PodDescription: Equatable, Sendable {
    public var namespace: String
    public var name: String
    public var nodeName: String?
    public var phase: String
    public var deleting: Bool
    public var ports: [(name: String?, number: Int)]

    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    public static func == (left: PodDescription, right: PodDescription) -> Bool {
        left.namespace == right.namespace && left.name == right.name && left.nodeName == right.nodeName
            && left.phase == right.phase && left.deleting == right.deleting
            && left.ports.map(\.name) == right.ports.map(\.name) && left.ports.map(\.number) == right.ports.map(\.number)
    }

    /// The JSON body; a `Status` (an error) or anything else is a `Problem`.
    public init(json text: String) throws {
        let node = try Self.composed(text)
        guard case .mapping(let root)? = node else { throw Problem(description: "the server's answer is not a JSON object") }
        guard root["kind"]?.string == "Pod" else {
            if root["kind"]?.string == "Status", let message = root["message"]?.string {
                throw Problem(description: message)
            }
            throw Problem(description: "the server's answer is not a Pod")
        }
        self.init(object: root)
    }

    /// The items of a `PodList` (a gateway reads each node relay's).
    public static func list(json text: String) throws -> [PodDescription] {
        let node = try Self.composed(text)
        guard case .mapping(let root)? = node, root["kind"]?.string == "PodList" else {
            throw Problem(description: "the server's answer is not a PodList")
        }
        guard case .sequence(let items)? = root["items"] else { return [] }
        return items.compactMap { item in
            guard case .mapping(let object) = item else { return nil }
            let pod = PodDescription(object: object)
            return pod.name.isEmpty ? nil : pod
        }
    }

    /// The answer's document: a server's (or a node relay's) text, so its nesting is checked
    /// before Yams composes it (`NestingDepth`).
    private static func composed(_ text: String) throws -> Node? {
        do { return try NestingDepth.compose(text) } catch is NestingDepth.TooDeep {
            throw Problem(description: "the server's answer nests lists and mappings more than \(NestingDepth.limit) deep")
        } catch {
            throw Problem(description: "the server's answer is not JSON")
        }
    }

    private init(object root: Node.Mapping) {
        let metadata = root["metadata"]
        namespace = metadata?["namespace"]?.string ?? ""
        name = metadata?["name"]?.string ?? ""
        deleting = metadata?["deletionTimestamp"]?.string.map { !$0.isEmpty } ?? false
        nodeName = root["spec"]?["nodeName"]?.string
        phase = root["status"]?["phase"]?.string ?? "Unknown"
        var ports: [(name: String?, number: Int)] = []
        if case .sequence(let containers)? = root["spec"]?["containers"] {
            for container in containers {
                guard case .sequence(let list)? = container["ports"] else { continue }
                for port in list {
                    guard let number = port["containerPort"]?.int, (1...65535).contains(number) else { continue }
                    ports.append((port["name"]?.string, number))
                }
            }
        }
        self.ports = ports
    }

    /// kubectl's check before it forwards: the pod must be Running (and not being deleted).
    public var notRunning: String? {
        if phase != "Running" { return "unable to forward port because pod is not running. Current status=\(phase)" }
        if deleting { return "unable to forward port because pod is being deleted" }
        return nil
    }
}
