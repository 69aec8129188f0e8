import FuzzSupport
import HTTP2

// `Base64URL` (the HTTP2-Settings header): any bytes encode to unpadded base64url that decodes
// back to them; and any text decodes as a model says: nil exactly when a character before the
// first "=" is outside the alphabet (base64url, and "+" "/" of plain base64), otherwise 6 bits a
// character, the whole bytes of them.

let digits: [UInt8: Int] = {
    var table: [UInt8: Int] = [:]
    for (value, character) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8.enumerated() {
        table[character] = value
    }
    table[UInt8(ascii: "+")] = 62
    table[UInt8(ascii: "/")] = 63
    return table
}()

func expected(_ text: String) -> [UInt8]? {
    var bits = 0, value = 0
    var out: [UInt8] = []
    for character in text.utf8.prefix(while: { $0 != UInt8(ascii: "=") }) {
        guard let digit = digits[character] else { return nil }
        value = (value << 6 | digit) & 0xFFFF
        bits += 6
        if bits >= 8 {
            bits -= 8
            out.append(UInt8(truncatingIfNeeded: value >> bits))
        }
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Array(FuzzInput(data, size).bytes)

    let encoded = Base64URL.encode(bytes)
    require(encoded.utf8.count == (bytes.count * 4 + 2) / 3, "\(bytes.count) bytes encoded to \(encoded.utf8.count) characters")
    require(encoded.utf8.allSatisfy { digits[$0] != nil && $0 != UInt8(ascii: "+") && $0 != UInt8(ascii: "/") },
            "\(bytes) encoded to \(encoded), not base64url")
    require(Base64URL.decode(encoded) == bytes, "\(bytes) encoded to \(encoded), which decodes to \(String(describing: Base64URL.decode(encoded)))")

    let text = String(decoding: bytes, as: UTF8.self)
    let decoded = Base64URL.decode(text)
    require(decoded == expected(text), "\(text.debugDescription) decoded to \(String(describing: decoded)), the model says \(String(describing: expected(text)))")
    if let decoded {
        require(Base64URL.decode(Base64URL.encode(decoded)) == decoded, "\(decoded) does not survive encode-decode")
    }
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
