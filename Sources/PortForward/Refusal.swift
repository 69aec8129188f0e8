import HTTP2

/// Why the relay answers a request with anything but 200: what the I/O code reports (connectors,
/// path resolution, the stream checks, the HTTP/1.1 handshake). `status`, `reasonPhrase` and
/// `text` (the one-line body) come from the one mapping below, so an HTTP status is chosen in
/// one place, not at each place that refuses.
public enum Refusal: Error, Sendable {
    // Who asks: 401 (no credentials, or a token the relay does not know), 403 (the rules say
    // no). Their bodies are Kubernetes `Status` objects: kubectl prints a refused upgrade's message
    // from one.
    case unauthorized
    case forbidden(Forbidden)
    // Where the path leads: 404.
    case unknownPath(String)
    case nodeNotFound(String)
    case podNotFound(namespace: String, name: String)
    /// A gateway: the path names a node the pod is not on (404, as for a node's own relay).
    case podNotOnNode(namespace: String, name: String, node: String)
    /// A gateway: two or more nodes report the pod (409): it does not guess which one is meant.
    case podOnSeveralNodes(namespace: String, name: String, nodes: [String])
    /// A gateway: the pod's node relay cannot be reached now (503), and why.
    case nodeUnavailable(node: String, reason: String)
    /// A gateway: the node relay answered the stream with this status and text, passed on.
    case upstream(status: Int, text: String)
    // The stream's own request.
    case badPort(HeadError)
    case tooManyStreams(limit: Int)
    // Reaching the pod's port.
    case namespaceUnavailable(NamespaceProblem)
    /// Refused, unreachable, socat's error line: the reason as the system or socat gave it.
    case connectFailed(String)
    case connectTimedOut(port: Int, seconds: Double)
    // The HTTP/1.1 handshake.
    case handshakeTimeout(seconds: Double)
    case lengthRequired
    case bodyTooLarge(limit: Int)
    case upgradeRequired
    case invalidSettings(String)
    case badRequest(String)
    case headerFieldsTooLarge(String)

    /// A request head the parser refused. The HTTP2 module's parser knows nothing of this type
    /// (it serves the client too, and stays apart from PortForward): it says 431 for a head too
    /// large and 400 for anything else malformed.
    public init(invalidHead status: Int, reason: String) {
        self = status == 431 ? .headerFieldsTooLarge(reason) : .badRequest(reason)
    }

    /// The one mapping.
    private var answer: (status: Int, text: String) {
        switch self {
        case .unauthorized:
            return (401, "Unauthorized")
        case .forbidden(let forbidden):
            return (403, forbidden.message)
        // Names come from the peer: the text quotes at most a name's length (a path's 256 bytes).
        case .unknownPath(let path):
            return (404, "unknown path \"\(path.prefix(256))\": expected /portForward/<namespace>/<pod> or /proxy/nodes/<node>/portForward/<namespace>/<pod>")
        case .nodeNotFound(let node):
            return (404, "node \"\(node.prefix(253))\" not found")
        case .podNotFound(let namespace, let name):
            return (404, "pod \"\(namespace.prefix(63))/\(name.prefix(253))\" not found")
        case .podNotOnNode(let namespace, let name, let node):
            return (404, "pod \"\(namespace.prefix(63))/\(name.prefix(253))\" not found on node \"\(node.prefix(253))\"")
        case .podOnSeveralNodes(let namespace, let name, let nodes):
            let pod = "\(namespace.prefix(63))/\(name.prefix(253))"
            return (409, "pod \"\(pod)\" is reported by \(nodes.count) nodes (\(nodes.joined(separator: ", "))): "
                    + "name one with /proxy/nodes/<node>/portForward/\(pod)")
        case .nodeUnavailable(let node, let reason):
            return (503, "node \"\(node)\" is unreachable: \(reason)")
        case .upstream(let status, let text):
            return (status, text)
        case .badPort(let error):
            return (400, error.description)
        case .tooManyStreams(let limit):
            return (503, "the relay holds \(limit) streams (--max-streams): try again later")
        case .namespaceUnavailable(let problem):
            return (502, problem.description)
        case .connectFailed(let reason):
            return (502, reason)
        case .connectTimedOut(let port, let seconds):
            return (504, "timed out connecting to port \(port) after \(seconds.formatted1)s")
        case .handshakeTimeout(let seconds):
            return (408, "no HTTP/2 preface or complete request within \(seconds.formatted1) s")
        case .lengthRequired:
            return (411, "a request body must have a Content-Length")
        case .bodyTooLarge(let limit):
            return (413, "request body larger than \(limit) bytes (the stream window)")
        case .upgradeRequired:
            return (426, "this relay speaks HTTP/2: send Upgrade: h2c with HTTP2-Settings (both named in Connection), or use prior knowledge")
        case .invalidSettings(let reason):
            return (400, "invalid HTTP2-Settings: \(reason)")
        case .badRequest(let reason):
            return (400, reason)
        case .headerFieldsTooLarge(let reason):
            return (431, reason)
        }
    }

    public var status: Int { answer.status }

    /// The one-line body, without its line end.
    public var text: String { answer.text }

    /// The body's media type: a `Status` for 401 and 403 (as kube-apiserver answers them), one
    /// line of text for the rest.
    public var contentType: String {
        kubernetesStatus == nil ? "text/plain; charset=utf-8" : "application/json"
    }

    /// The whole body, with its line end.
    public var body: String { (kubernetesStatus ?? text) + "\n" }

    /// kube-apiserver's `Status` for the refusals it also makes:
    /// `{"kind":"Status",...,"message":"Unauthorized","reason":"Unauthorized","code":401}`.
    private var kubernetesStatus: String? {
        switch self {
        case .unauthorized:
            return KubernetesAPI.status(401, "Unauthorized", text)
        case .forbidden(let forbidden):
            var details: [(String, JSONValue)] = []
            if let name = forbidden.name { details.append(("name", .string(String(name.prefix(253))))) }
            details.append(("kind", .string(forbidden.kind)))
            return KubernetesAPI.status(403, "Forbidden", text, details: details)
        default:
            return nil
        }
    }

    /// The HTTP/1.1 status line's phrase (RFC 9110's).
    public var reasonPhrase: String {
        switch status {
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 409: return "Conflict"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 426: return "Upgrade Required"
        case 431: return "Request Header Fields Too Large"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        default: return "Error"
        }
    }

    /// Client side: whether a refusal's text is the whole message to show. A 404's text names
    /// what the user asked for and was not found (`pod "default/web" not found`), a complete
    /// sentence on its own; any other status is about the exchange with the server, so the
    /// client says which server answered which status before the text.
    public static func textIsMessage(status: Int) -> Bool { status == 404 }

    /// Client side: what a refusal's body says. A Kubernetes `Status` (a 401 or 403) says it in
    /// its `message`, which is shown alone as kubectl shows it; any other body is one line of text.
    public static func message(body: String) -> String {
        let text = body.trimmed
        guard text.hasPrefix("{"), let message = statusMessage(text) else { return text }
        return message
    }

    /// The `"message"` string of a `Status` object, its escapes undone; nil if there is none.
    static func statusMessage(_ json: String) -> String? {
        let bytes = Array(json.utf8)
        let key = Array("\"message\":\"".utf8)
        guard bytes.count > key.count,
              let start = (0...(bytes.count - key.count)).first(where: { bytes[$0..<($0 + key.count)].elementsEqual(key) }) else { return nil }
        var out: [UInt8] = []
        var index = start + key.count
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
            if byte == UInt8(ascii: "\\"), index + 1 < bytes.count {
                index += 1
                switch bytes[index] {
                case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
                case UInt8(ascii: "t"): out.append(UInt8(ascii: "\t"))
                case UInt8(ascii: "r"): out.append(UInt8(ascii: "\r"))
                case UInt8(ascii: "u"): out.append(UInt8(ascii: "?"))  // not in our messages; shown as a mark
                    index += 4
                default: out.append(bytes[index])
                }
            } else {
                out.append(byte)
            }
            index += 1
        }
        return nil
    }
}

extension Refusal: CustomStringConvertible {
    public var description: String { "\(status) \(reasonPhrase): \(text)" }
}
