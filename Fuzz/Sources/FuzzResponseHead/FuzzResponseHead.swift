import FuzzSupport
import HeadProperties
import HTTP2

// `ResponseHead.parse` (the client reading the relay's answer to its upgrade) on any bytes: the
// properties of HeadProperties, and a status line "HTTP/1.x SP 3DIGIT [SP reason]" whose digits
// are the status.

extension ResponseHead: ParsedHead {
    public var startLine: [String] { ["\(status)"] }
    public var writtenStartLine: String { "HTTP/1.1 \(status) Reason" }

    public func checkStartLine(_ line: ArraySlice<UInt8>, context: String) {
        let line = Array(line)
        let digit: (UInt8) -> Bool = { (48...57).contains($0) }
        require(line.count >= 12 && line[..<7].elementsEqual("HTTP/1.".utf8) && digit(line[7]) && line[8] == 32
                && line[9...11].allSatisfy(digit) && (line.count == 12 || line[12] == 32),
                "\(context): status line \(line.debugText) accepted")
        require(status == Int(String(decoding: line[9...11], as: UTF8.self)) && status >= 100,
                "\(context): status \(status) from \(line.debugText)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    checkHead(ResponseHead.self, FuzzInput(data, size).bytes)
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
