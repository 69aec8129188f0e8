import FuzzSupport
import PortForward

// `TokenFile(csv:source:)` on any text: it loads or throws one line that starts with the source
// and names a line; what it loads is consistent (tokens of visible ASCII, users not empty, groups
// trimmed and not empty), and written back out with every field quoted it loads again to the same
// identities.

/// A CSV field in quotes, inner quotes doubled (as bytes: a quote followed by a combining mark is
/// one Character).
func quotedField(_ text: String) -> String {
    var bytes: [UInt8] = [34]
    for byte in text.utf8 { bytes.append(byte); if byte == 34 { bytes.append(34) } }
    bytes.append(34)
    return String(decoding: bytes, as: UTF8.self)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = FuzzInput(data, size).bytes.text
    let file: TokenFile
    do {
        file = try TokenFile(csv: text, source: "fuzz.csv")
    } catch {
        let message = "\(error)"
        require(message.hasPrefix("fuzz.csv:") && !message.contains("\n") && !message.contains("\r"),
                "an error not one line from the file: \(message.debugDescription)")
        return 0
    }
    var written = "# written back\n"
    for (token, identity) in file.identities.sorted(by: { $0.key < $1.key }) {
        require(!token.isEmpty && token.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "token \(token.debugDescription)")
        require(!identity.user.isEmpty, "empty user for a token")
        require(identity.groups.allSatisfy { !$0.isEmpty && !$0.contains(",") }, "groups \(identity.groups)")
        require(file.identity(token: token) == identity, "lookup")
        written += [token, identity.user, "0", identity.groups.joined(separator: ",")].map(quotedField).joined(separator: ",") + "\n"
    }
    do {
        let again = try TokenFile(csv: written, source: "written.csv")
        require(again.identities == file.identities, "\(file.identities) written as\n\(written)\nloads as \(again.identities)")
    } catch {
        require(false, "\(file.identities) written as\n\(written)\ndoes not load: \(error)")
    }
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
