import FuzzSupport
import PortForward

// `ForwardPath(parsing:)`: a parsed path's `.path` parses back to the same value and is the input
// up to its query; the parts it took are non-empty and hold no "/" or "?" byte; and it agrees
// with a model of the three path shapes that splits bytes, as a URL path is split.

/// The path before its query, by bytes.
func beforeQuery(_ path: String) -> String {
    String(decoding: path.utf8.prefix { $0 != UInt8(ascii: "?") }, as: UTF8.self)
}

func expected(_ path: String) -> ForwardPath? {
    let parts = Array(beforeQuery(path).utf8).split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        .map { String(decoding: $0, as: UTF8.self) }
    switch parts.count {
    case 4 where parts[0] == "" && parts[1] == "portForward" && parts[2...].allSatisfy({ !$0.isEmpty }):
        return ForwardPath(node: nil, namespace: parts[2], pod: parts[3])
    case 7 where parts[0] == "" && parts[1] == "proxy" && parts[2] == "nodes" && parts[4] == "portForward"
        && [parts[3], parts[5], parts[6]].allSatisfy({ !$0.isEmpty }):
        return ForwardPath(node: parts[3], namespace: parts[5], pod: parts[6])
    case 8 where parts[0] == "" && parts[1] == "api" && parts[2] == "v1" && parts[3] == "namespaces"
        && parts[5] == "pods" && parts[7] == "portforward" && !parts[4].isEmpty && !parts[6].isEmpty:
        return ForwardPath(namespace: parts[4], pod: parts[6], subresource: true)
    default:
        return nil
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = FuzzInput(data, size).bytes.text
    let parsed = ForwardPath(parsing: text)
    require(parsed == expected(text), "\(text.debugDescription) parsed to \(String(describing: parsed)), the model says \(String(describing: expected(text)))")
    guard let parsed else { return 0 }
    for part in [parsed.node, parsed.namespace, parsed.pod].compactMap({ $0 }) {
        require(!part.isEmpty && !part.utf8.contains(UInt8(ascii: "/")) && !part.utf8.contains(UInt8(ascii: "?")),
                "\(text.debugDescription): part \(part.debugDescription)")
    }
    require(ForwardPath(parsing: parsed.path) == parsed, "\(parsed) does not parse back from \(parsed.path.debugDescription)")
    require(Array(parsed.path.utf8) == Array(beforeQuery(text).utf8), "\(text.debugDescription) parsed to \(parsed.path.debugDescription)")
    require(parsed.description == parsed.path, "description \(parsed.description) is not the path")
    // A query never changes the target.
    require(ForwardPath(parsing: parsed.path + "?x=/a/b") == parsed, "a query changed \(parsed.path)")
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
