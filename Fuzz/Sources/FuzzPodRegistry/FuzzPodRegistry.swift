import FuzzSupport
import PortForward

// `PodRegistry(yaml:source:)` on any text: it loads or throws an error that names the source;
// what it loads is consistent (each pod under its qualified name, a name, a positive pid, not
// both netns and pid), and written back out as a pods file it loads again to the same registry.

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
        require("\(error)".hasPrefix("fuzz.yaml: "), "an error that does not name the file: \(error)")
        return 0
    }
    for (key, pod) in registry.pods {
        require(key == pod.qualifiedName, "pod \(pod) filed under \(key.debugDescription)")
        require(!pod.name.isEmpty, "a pod without a name: \(pod)")
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
