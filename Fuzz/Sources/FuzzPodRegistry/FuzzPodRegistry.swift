import FuzzSupport
import PortForward

// `PodRegistry(yaml:source:)` on any text: it loads or throws a one-line error that starts with
// the source; what it loads is consistent (each pod under its qualified name, a positive pid, not
// both netns and pid), named as Kubernetes names (the namespace a DNS label, the name a DNS
// subdomain) so that a request path reaches it, and written back out as a pods file it loads again
// to the same registry.

/// [a-z0-9]([-a-z0-9]*[a-z0-9])?
func isLabel<Bytes: Collection>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
    let alphanumeric: (UInt8) -> Bool = { (97...122).contains($0) || (48...57).contains($0) }
    guard let first = bytes.first, alphanumeric(first) else { return false }
    return bytes.allSatisfy { alphanumeric($0) || $0 == 45 } && alphanumeric(Array(bytes).last!)
}

/// A DNS label as Kubernetes checks it (IsDNS1123Label): a label of at most 63.
func isDNSLabel(_ text: String) -> Bool { text.utf8.count <= 63 && isLabel(text.utf8) }

/// A DNS subdomain as Kubernetes checks it (IsDNS1123Subdomain): labels joined by dots, at most
/// 253 in all (a label on its own may be longer than 63 there).
func isDNSSubdomain(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    return bytes.count <= 253 && bytes.split(separator: 46, omittingEmptySubsequences: false).allSatisfy { isLabel($0) }
}

/// A YAML double-quoted scalar: always a string, whatever it looks like.
func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case " "..."~": out.unicodeScalars.append(scalar)
        default:
            let hex = String(scalar.value, radix: 16)
            out += "\\U" + String(repeating: "0", count: 8 - hex.count) + hex
        }
    }
    return out + "\""
}

func podsFile(_ registry: PodRegistry) -> String {
    var text = "pods:\n"
    for pod in registry.pods.values.sorted(by: { $0.qualifiedName < $1.qualifiedName }) {
        var fields = ["namespace: \(quoted(pod.namespace))", "name: \(quoted(pod.name))"]
        if let netns = pod.netns { fields.append("netns: \(quoted(netns))") }
        if let pid = pod.pid { fields.append("pid: \(pid)") }
        text += "  - {\(fields.joined(separator: ", "))}\n"
    }
    return text
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = FuzzInput(data, size).bytes.text
    let registry: PodRegistry
    do {
        registry = try PodRegistry(yaml: text, source: "fuzz.yaml")
    } catch {
        let message = "\(error)"
        require(message.hasPrefix("fuzz.yaml:") && !message.contains("\n"), "an error not one line from the file: \(message.debugDescription)")
        return 0
    }
    for (key, pod) in registry.pods {
        require(key == pod.qualifiedName, "pod \(pod) filed under \(key.debugDescription)")
        require(isDNSLabel(pod.namespace), "namespace \(pod.namespace.debugDescription) is no DNS label")
        require(isDNSSubdomain(pod.name), "name \(pod.name.debugDescription) is no DNS subdomain")
        let path = ForwardPath(parsing: "/portForward/\(pod.namespace)/\(pod.name)")
        require(path.map { registry.pod(namespace: $0.namespace, name: $0.pod) } == pod, "\(pod) is not reached by its path")
        require(pod.netns == nil || pod.pid == nil, "netns and pid: \(pod)")
        require(pod.pid.map { $0 > 0 } ?? true, "pid \(String(describing: pod.pid))")
        require(registry.pod(namespace: pod.namespace, name: pod.name) == pod, "\(pod) cannot be looked up")
    }
    let written = podsFile(registry)
    do {
        let again = try PodRegistry(yaml: written, source: "written.yaml")
        require(again.pods == registry.pods, "\(registry.pods) written as\n\(written)\nloads as \(again.pods)")
    } catch {
        require(false, "\(registry.pods) written as\n\(written)\ndoes not load: \(error)")
    }
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
