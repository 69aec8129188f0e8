import FuzzSupport
import HeadProperties
import HTTP2

// `RequestHead.parse` (the relay reading an upgrade request) on any bytes: the properties of
// HeadProperties, and a request line that is "method SP target SP version" with a token method,
// a visible-ASCII target and HTTP/1.0 or HTTP/1.1.

extension RequestHead: ParsedHead {
    public var startLine: [String] { [method, target, version] }
    public var writtenStartLine: String { "\(method) \(target) \(version)" }

    public func checkStartLine(_ line: ArraySlice<UInt8>, context: String) {
        let parts = line.split(separator: 32, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        require(parts == startLine, "\(context): request line \(Array(line).debugText) parsed to \(startLine)")
        require(HTTPGrammar.isToken(method), "\(context): method \(method.debugDescription)")
        require(HTTPGrammar.isRequestTarget(target), "\(context): target \(target.debugDescription)")
        require(version == "HTTP/1.1" || version == "HTTP/1.0", "\(context): version \(version.debugDescription)")
        // RFC 9112 section 3.2: exactly one Host in a 1.1 request, at most one in 1.0.
        let hosts = fields.all("host").count
        require(hosts == 1 || (hosts == 0 && version == "HTTP/1.0"), "\(context): \(hosts) Host fields")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    checkHead(RequestHead.self, FuzzInput(data, size).bytes)
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
