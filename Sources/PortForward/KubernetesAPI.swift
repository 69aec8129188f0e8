import HTTP2

/// The slice of the Kubernetes API that kubectl reads before it port-forwards (discovery, then the
/// pod), served from the pod registry: a request in, an answer out, no I/O. Everything kubectl
/// needs to decide is here (is the pod there, is it Running, what are its named ports); the
/// port-forward itself is an upgrade, which the handshake hands to a session instead.
/// docs/PROTOCOL.md, "The Kubernetes API", lists the endpoints.
public struct KubernetesAPI: Sendable {
    public struct Response: Sendable {
        public var status: Int
        public var reasonPhrase: String
        /// Beyond Content-Length and Connection, which the executor writes.
        public var headers: [(name: String, value: String)]
        public var body: String
    }

    public let registry: PodRegistry
    /// `spec.nodeName` of every pod: the relay's node.
    public let node: String
    /// Whether a pod's network can be entered now (the relay asks `NetworkNamespace.check`;
    /// tests say). Asked per answer, as every stream asks, since a pod's namespace may come and
    /// go while the relay runs; the registry's start-up check is already stale.
    public let isRunning: @Sendable (Pod) -> Bool
    /// A gateway's pods that more than one node reports, by qualified name (`default/web`): each
    /// is listed once per node, and a read of the name alone is a 409 naming the nodes.
    public let conflicts: [String: [Pod]]

    public init(registry: PodRegistry, node: String, conflicts: [String: [Pod]] = [:],
                isRunning: @escaping @Sendable (Pod) -> Bool) {
        self.registry = registry
        self.node = node
        self.conflicts = conflicts
        self.isRunning = isRunning
    }

    /// Every pod, a pod that several nodes report once per node.
    private var allPods: [Pod] { Array(registry.pods.values) + conflicts.values.joined() }

    /// The pod named, or the answer when there is none or several.
    private func lookup(namespace: String, name: String) -> Result<Pod, Failure> {
        if let several = conflicts["\(namespace)/\(name)"] {
            let refusal = Refusal.podOnSeveralNodes(namespace: namespace, name: name, nodes: several.compactMap(\.node).sorted())
            return .failure(Failure(response: failure(409, "Conflict", refusal.text)))
        }
        guard let pod = registry.pod(namespace: namespace, name: name) else { return .failure(Failure(response: podNotFound(name))) }
        return .success(pod)
    }

    private struct Failure: Error { var response: Response }

    /// Whether `target` is a path of this API (`/version`, `/api...`, `/apis...`): the handshake
    /// sends a plain request for it here rather than asking it to upgrade.
    public static func serves(_ target: String) -> Bool {
        let path = Self.path(of: target)
        return path == "/version" || path == "/api" || path == "/apis"
            || path.hasPrefix("/api/") || path.hasPrefix("/apis/") || path.hasPrefix("/version/")
    }

    /// The Kubernetes release we say we are. 1.32: the kubectl dispatcher at /usr/bin/kubectl
    /// runs the `kubectl.1.<minor>` it has for the server's minor version (27 to 33 here) and its
    /// built-in 1.32 when /version fails; 1.32 is the release whose port-forward client the
    /// reference (../shared/reference/kubernetes-port-forward.md) was checked against, so the
    /// dispatcher runs the same kubectl whether it asks or not.
    public static let versionMajor = "1"
    public static let versionMinor = "32"

    public func respond(method: String, target: String, headers: HeadFields) -> Response {
        let path = Self.path(of: target)
        let parts = path.utf8.split(separator: UInt8(ascii: "/")).map { String(decoding: $0, as: UTF8.self) }
        let query = Self.query(of: target)
        if parts.count == 7, parts[0] == "api", parts[1] == "v1", parts[2] == "namespaces", parts[4] == "pods", parts[6] == "portforward" {
            return portForward(method: method, namespace: parts[3], name: parts[5], headers: headers)
        }
        guard method == "GET" || method == "HEAD" else {
            return failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        }
        if query.contains(where: { $0.name == "watch" && $0.value != "false" && $0.value != "0" }) {
            return failure(400, "BadRequest", "watch is not supported: this relay serves a fixed list of pods")
        }
        switch parts.count {
        case 1 where parts[0] == "version": return ok(version)
        case 1 where parts[0] == "api": return ok(apiVersions)
        case 1 where parts[0] == "apis": return ok(.object([("kind", .string("APIGroupList")), ("apiVersion", .string("v1")), ("groups", .array([]))]))
        case 2 where parts == ["api", "v1"]: return ok(resources)
        case 3 where parts == ["api", "v1", "pods"], 5 where parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" && parts[4] == "pods":
            var selected = parts.count == 5 ? allPods.filter { $0.namespace == parts[3] } : allPods
            if let selector = query.last(where: { $0.name == "fieldSelector" }) {
                switch FieldSelector.parsing(Self.percentDecoded(selector.value)) {
                case .success(let fields): selected = selected.filter { fields.matches($0, node: node, phase: phase) }
                case .failure(let problem): return failure(400, "BadRequest", problem.description)
                }
            }
            return ok(pods(selected, headers))
        case 6 where parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" && parts[4] == "pods":
            switch lookup(namespace: parts[3], name: parts[5]) {
            case .success(let pod): return ok(Self.wantsTable(headers) ? table([pod]) : object(pod))
            case .failure(let failure): return failure.response
            }
        default:
            return failure(404, "NotFound", "the server could not find the requested resource")
        }
    }

    /// `.../pods/NAME/portforward` reaches here only when it is not an upgrade the handshake takes
    /// itself (h2c; SPDY/3.1 with portforward.k8s.io): kube-apiserver's answer to a plain request,
    /// or ours to an upgrade we do not speak. Each is a failure whose status is not 101, so
    /// kubectl's WebSocket attempt falls back to SPDY (client-go `fallback_dialer.go`: any non-101
    /// answer does), and a refused SPDY attempt ends with our message (client-go decodes a
    /// `Status` body and prints it).
    private func portForward(method: String, namespace: String, name: String, headers: HeadFields) -> Response {
        guard method == "GET" || method == "POST" else {
            return failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        }
        if case .failure(let failure) = lookup(namespace: namespace, name: name) { return failure.response }
        if headers.lists("upgrade", "websocket") {
            return failure(501, "NotImplemented",
                           "this relay does not speak WebSocket port-forward yet: it serves SPDY/3.1 (kubectl falls back to it) and HTTP/2")
        }
        if headers.lists("upgrade", "spdy/3.1") {
            // The handshake upgrades SPDY that asks for portforward.k8s.io; any other stream protocol
            // is refused as the kubelet refuses it.
            return failure(403, "Forbidden", "unable to upgrade: no stream protocol in common: this relay speaks portforward.k8s.io")
        }
        return failure(400, "BadRequest", "Upgrade request required")
    }

    /// What a request asks to do, for authorization: kube-apiserver's request info
    /// (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`) for the paths we serve.
    /// Port-forward is `create pods/portforward` whatever the method (see
    /// `AccessControl.Attributes.portForward`); anything that is not a pod is discovery.
    public static func attributes(method: String, target: String) -> AccessControl.Attributes {
        let path = Self.path(of: target)
        let parts = path.utf8.split(separator: UInt8(ascii: "/")).map { String(decoding: $0, as: UTF8.self) }
        let verb: String
        switch method {
        case "GET", "HEAD": verb = "get"
        case "POST": verb = "create"
        case "PUT": verb = "update"
        default: verb = method.lowercased()
        }
        let listVerb = verb == "get" ? "list" : verb
        if parts.count == 7, parts[0] == "api", parts[1] == "v1", parts[2] == "namespaces", parts[4] == "pods", parts[6] == "portforward" {
            return .portForward(namespace: parts[3], pod: parts[5])
        }
        if parts.count == 6, parts[0] == "api", parts[1] == "v1", parts[2] == "namespaces", parts[4] == "pods" {
            return .resource(verb: verb, resource: "pods", namespace: parts[3], name: parts[5])
        }
        if parts.count == 5, parts[0] == "api", parts[1] == "v1", parts[2] == "namespaces", parts[4] == "pods" {
            return .resource(verb: listVerb, resource: "pods", namespace: parts[3], name: nil)
        }
        if parts == ["api", "v1", "pods"] {
            return .resource(verb: listVerb, resource: "pods", namespace: nil, name: nil)
        }
        return .nonResource(verb: verb, path: String(path))
    }

    // MARK: discovery

    private var version: JSONValue {
        #if arch(x86_64)
        let platform = "linux/amd64"
        #elseif arch(arm64)
        let platform = "linux/arm64"
        #else
        let platform = "linux/unknown"
        #endif
        return .object([
            ("major", .string(Self.versionMajor)), ("minor", .string(Self.versionMinor)),
            ("gitVersion", .string("v\(Self.versionMajor).\(Self.versionMinor).0-portforward")),
            ("gitCommit", .string("")), ("gitTreeState", .string("")), ("buildDate", .string("")),
            ("goVersion", .string("")), ("compiler", .string("")), ("platform", .string(platform)),
        ])
    }

    private var apiVersions: JSONValue {
        .object([("kind", .string("APIVersions")), ("versions", .array([.string("v1")])), ("serverAddressByClientCIDRs", .array([]))])
    }

    private var resources: JSONValue {
        .object([
            ("kind", .string("APIResourceList")), ("groupVersion", .string("v1")),
            ("resources", .array([
                .object([("name", .string("pods")), ("singularName", .string("pod")), ("namespaced", .bool(true)),
                         ("kind", .string("Pod")), ("verbs", .array([.string("get"), .string("list")])),
                         ("shortNames", .array([.string("po")]))]),
                .object([("name", .string("pods/portforward")), ("singularName", .string("")), ("namespaced", .bool(true)),
                         ("kind", .string("PodPortForwardOptions")), ("verbs", .array([.string("create"), .string("get")]))]),
            ])),
        ])
    }

    // MARK: pods

    private func phase(_ pod: Pod) -> String { pod.phase ?? (isRunning(pod) ? "Running" : "Pending") }

    /// `%XX` decoded, `+` a space (a query value as kubectl and client-go encode it).
    static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%"), let high = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), high != utf8.endIndex,
               let low = utf8.index(high, offsetBy: 1, limitedBy: utf8.endIndex), low != utf8.endIndex,
               let value = UInt8(String(decoding: [utf8[high], utf8[low]], as: UTF8.self), radix: 16) {
                bytes.append(value)
                index = utf8.index(after: low)
                continue
            }
            bytes.append(byte == UInt8(ascii: "+") ? UInt8(ascii: " ") : byte)
            index = utf8.index(after: index)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// kubectl's `get` asks for a server-side `Table` (`Accept: application/json;as=Table;v=v1;
    /// g=meta.k8s.io, ..., application/json`); anything else gets the objects.
    static func wantsTable(_ headers: HeadFields) -> Bool {
        headers.first("accept").map { $0.contains("as=Table") && $0.contains("g=meta.k8s.io") } ?? false
    }

    private func pods(_ pods: [Pod], _ headers: HeadFields) -> JSONValue {
        Self.wantsTable(headers) ? table(pods) : podList(pods)
    }

    /// The columns `kubectl get pods` prints (`-o wide` adds those of priority 1), as
    /// kube-apiserver's pod table has them; a row's object is the pod's metadata.
    private func table(_ pods: [Pod]) -> JSONValue {
        func column(_ name: String, _ description: String, priority: Int = 0, format: String = "") -> JSONValue {
            .object([("name", .string(name)), ("type", .string("string")), ("format", .string(format)),
                     ("description", .string(description)), ("priority", .number(priority))])
        }
        let sorted = pods.sorted { ($0.namespace, $0.name, $0.node ?? "") < ($1.namespace, $1.name, $1.node ?? "") }
        let rows: [JSONValue] = sorted.map { pod in
            let phase = phase(pod)
            return .object([
                ("cells", .array([.string(pod.name), .string(phase == "Running" ? "1/1" : "0/1"), .string(phase), .string("0"),
                                  .string("<unknown>"), .string("<none>"), .string(pod.node ?? node), .string("<none>"), .string("<none>")])),
                ("object", .object([
                    ("kind", .string("PartialObjectMetadata")), ("apiVersion", .string("meta.k8s.io/v1")),
                    ("metadata", .object([("name", .string(pod.name)), ("namespace", .string(pod.namespace)),
                                          ("uid", .string(Self.uid(pod))), ("resourceVersion", .string("1"))])),
                ])),
            ])
        }
        return .object([
            ("kind", .string("Table")), ("apiVersion", .string("meta.k8s.io/v1")),
            ("metadata", .object([("resourceVersion", .string("1"))])),
            ("columnDefinitions", .array([
                column("Name", "Name of the pod", format: "name"), column("Ready", "Containers ready of all containers"),
                column("Status", "The pod's phase"), column("Restarts", "Container restarts"), column("Age", "Time since creation"),
                column("IP", "The pod's IP address", priority: 1), column("Node", "The node the pod runs on", priority: 1),
                column("Nominated Node", "The node the scheduler nominated", priority: 1),
                column("Readiness Gates", "The pod's readiness gates", priority: 1),
            ])),
            ("rows", .array(rows)),
        ])
    }

    private func podList(_ pods: some Sequence<Pod>) -> JSONValue {
        let sorted = pods.sorted { ($0.namespace, $0.name, $0.node ?? "") < ($1.namespace, $1.name, $1.node ?? "") }
        return .object([
            ("kind", .string("PodList")), ("apiVersion", .string("v1")),
            ("metadata", .object([("resourceVersion", .string("1"))])),
            ("items", .array(sorted.map(object))),
        ])
    }

    /// A Pod object with what kubectl reads: its names, its node, its ports (named ports are
    /// resolved from them) and its phase (kubectl refuses to forward to a pod not `Running`).
    func object(_ pod: Pod) -> JSONValue {
        let ports: [JSONValue] = pod.ports.map { port in
            var members: [(String, JSONValue)] = []
            if let name = port.name { members.append(("name", .string(name))) }
            members.append(("containerPort", .number(port.containerPort)))
            members.append(("protocol", .string(port.protocol)))
            return .object(members)
        }
        var container: [(String, JSONValue)] = [("name", .string("main"))]
        if !ports.isEmpty { container.append(("ports", .array(ports))) }
        return .object([
            ("kind", .string("Pod")), ("apiVersion", .string("v1")),
            ("metadata", .object([
                ("name", .string(pod.name)), ("namespace", .string(pod.namespace)),
                ("uid", .string(Self.uid(pod))), ("resourceVersion", .string("1")),
            ])),
            ("spec", .object([("nodeName", .string(pod.node ?? node)), ("containers", .array([.object(container)]))])),
            ("status", .object([("phase", .string(pod.phase ?? (isRunning(pod) ? "Running" : "Pending")))])),
        ])
    }

    /// A UUID made from the pod's namespace and name, not drawn at random: the same pod keeps its
    /// uid across relay restarts and between the relays of a node, as a pod that has not been
    /// recreated keeps it in Kubernetes. Two 64-bit FNV-1a hashes (different offsets) fill its 128
    /// bits, marked as an RFC 9562 version 8 (implementation-defined) UUID.
    static func uid(_ pod: Pod) -> String {
        func fnv1a(_ offset: UInt64) -> UInt64 {
            var hash = offset
            for byte in pod.qualifiedName.utf8 {
                hash ^= UInt64(byte)
                hash = hash &* 0x100_0000_01b3
            }
            return hash
        }
        var high = fnv1a(0xcbf2_9ce4_8422_2325)
        var low = fnv1a(0x6c62_272e_07bb_0142)
        high = (high & ~0xF000) | 0x8000  // version 8 in the high nibble of the third group
        low = (low & ~(0xC << 60)) | (0x8 << 60)  // variant 10
        let digits = hexadecimal(high, 16) + hexadecimal(low, 16)
        let bytes = Array(digits.utf8)
        func group(_ range: Range<Int>) -> String { String(decoding: bytes[range], as: UTF8.self) }
        return "\(group(0..<8))-\(group(8..<12))-\(group(12..<16))-\(group(16..<20))-\(group(20..<32))"
    }

    // MARK: answers

    private func ok(_ value: JSONValue) -> Response {
        Response(status: 200, reasonPhrase: "OK", headers: [("Content-Type", "application/json")], body: value.serialized)
    }

    private func podNotFound(_ name: String) -> Response {
        // The name comes from the request path: quoted at most a pod name's length.
        let name = String(name.prefix(253))
        return failure(404, "NotFound", "pods \"\(name)\" not found",
                       details: [("name", .string(name)), ("kind", .string("pods"))])
    }

    /// A `Status` failure, as kube-apiserver writes one: client-go decodes the body of any
    /// non-2xx answer as a Status, and kubectl prints its message (`Error from server
    /// (NotFound): pods "web" not found`).
    func failure(_ status: Int, _ reason: String, _ message: String, details: [(String, JSONValue)]? = nil) -> Response {
        Response(status: status, reasonPhrase: Self.reasonPhrase(status), headers: [("Content-Type", "application/json")],
                 body: Self.status(status, reason, message, details: details))
    }

    /// A refusal (401, 403) as an API answer.
    static func failure(_ refusal: Refusal) -> Response {
        Response(status: refusal.status, reasonPhrase: refusal.reasonPhrase, headers: [("Content-Type", refusal.contentType)],
                 body: refusal.body)
    }

    /// The `Status` object's JSON.
    static func status(_ status: Int, _ reason: String, _ message: String, details: [(String, JSONValue)]? = nil) -> String {
        var members: [(String, JSONValue)] = [
            ("kind", .string("Status")), ("apiVersion", .string("v1")), ("metadata", .object([])),
            ("status", .string("Failure")), ("message", .string(message)), ("reason", .string(reason)),
        ]
        if let details { members.append(("details", .object(details))) }
        members.append(("code", .number(status)))
        return JSONValue.object(members).serialized
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 409: return "Conflict"
        case 405: return "Method Not Allowed"
        case 501: return "Not Implemented"
        default: return "Error"
        }
    }

    // MARK: targets

    /// The path, without the query.
    static func path(of target: String) -> Substring {
        target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? target[...]
    }

    /// The query's `name=value` pairs, undecoded (the names we look at need no decoding).
    static func query(of target: String) -> [(name: Substring, value: Substring)] {
        guard let mark = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return [] }
        return target[target.index(after: mark)...].split(separator: "&").map { pair in
            guard let equals = pair.firstIndex(of: "=") else { return (pair, "") }
            return (pair[..<equals], pair[pair.index(after: equals)...])
        }
    }
}

private func hexadecimal(_ value: UInt64, _ width: Int) -> String {
    let text = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - text.count)) + text
}

/// A list's `fieldSelector` (`spec.nodeName=node-a,status.phase!=Running`): the fields
/// kube-apiserver selects pods by that a relay or gateway knows, with `=`, `==` and `!=`, all
/// required to hold. Any other field is refused as kube-apiserver refuses it.
struct FieldSelector {
    struct Problem: Error, CustomStringConvertible { var description: String }
    static let fields: Set<String> = ["metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"]
    var requirements: [(field: String, value: String, equal: Bool)] = []

    static func parsing(_ text: String) -> Result<FieldSelector, Problem> {
        var selector = FieldSelector()
        for term in text.split(separator: ",") where !String(term).trimmed.isEmpty {
            let equal: Bool
            let parts: [Substring]
            if let range = term.range(of: "!=") {
                equal = false
                parts = [term[..<range.lowerBound], term[range.upperBound...]]
            } else if let range = term.range(of: "==") ?? term.range(of: "=") {
                equal = true
                parts = [term[..<range.lowerBound], term[range.upperBound...]]
            } else {
                return .failure(Problem(description: "invalid selector: '\(text.prefix(256))'; can't understand '\(term.prefix(256))'"))
            }
            let field = String(parts[0]).trimmed
            guard Self.fields.contains(field) else {
                return .failure(Problem(description: "field label not supported: \(field.prefix(256))"))
            }
            selector.requirements.append((field, String(parts[1]).trimmed, equal))
        }
        return .success(selector)
    }

    func matches(_ pod: Pod, node: String, phase: (Pod) -> String) -> Bool {
        requirements.allSatisfy { requirement in
            let value: String
            switch requirement.field {
            case "metadata.name": value = pod.name
            case "metadata.namespace": value = pod.namespace
            case "spec.nodeName": value = pod.node ?? node
            default: value = phase(pod)
            }
            return (value == requirement.value) == requirement.equal
        }
    }
}
