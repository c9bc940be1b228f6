import ArgumentParser
import Coordinator
import Foundation

/// `sura keys`: CurveZMQ key files for encrypted, authenticated serving (docs/protocol.md, "Security").
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Create and check CurveZMQ key files for `sura serve --curve-key` and `sura worker --curve-key`.",
        subcommands: [KeysGenerateCommand.self, KeysShowCommand.self])
}

/// `sura keys generate --out DIR --name NAME`: NAME.key (secret, 0600) and NAME.pub.
struct KeysGenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write a new key pair: NAME.key (public and secret key, mode 0600) and NAME.pub (public key, to distribute).",
        discussion: """
        Give the server's NAME.pub to every client and worker (--curve-server-key), and list each client's and \
        worker's NAME.pub in the server's --curve-authorized-keys. A .key file never leaves its machine.
        """)

    @Option(help: "Directory for the key files (created with mode 0700 if missing).")
    var out: String
    @Option(help: "Base name of the files: letters, digits, '.', '_' and '-'.")
    var name: String
    @Flag(help: "Replace existing NAME.key and NAME.pub.")
    var force = false

    func validate() throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard !name.isEmpty, !name.hasPrefix("."), name.allSatisfy({ allowed.contains($0) }) else {
            throw ValidationError("--name must be letters, digits, '.', '_' or '-' and not start with '.', got '\(name)'")
        }
    }

    func run() throws {
        do {
            let pair = try CurveKeyPair.generate()
            let files = try pair.write(directory: URL(fileURLWithPath: out), name: name, overwrite: force)
            print("secret key file: \(files.secret.path) (mode 0600, keep it on this machine)")
            print("public key file: \(files.public.path)")
            print("public-key = \(pair.publicKey)")
        } catch let error as CurveKeyFileError where error.message.hasPrefix("already exists") {
            throw CommandFailure("\(error.file) already exists; pass --force to replace it (peers holding the old .pub will be refused)")
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

/// `sura keys show FILE`: checks a key file and prints its public key.
struct KeysShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Check a key file (.key or .pub) and print its public key.")

    @Argument(help: "The key file.")
    var file: String

    func run() throws {
        do {
            let url = URL(fileURLWithPath: file)
            let pair = try CurveKeyPair.load(contentsOf: url, as: file)
            print("public-key = \(pair.publicKey)")
            print(pair.secretKey == nil ? "(public key only)" : "(with its secret key)")
            if pair.secretKey != nil, let warning = CurveKeyPair.permissionWarning(for: url, as: file) { print("warning: " + warning) }
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

/// A key file whose secret key this process uses, as a failure naming `option` and the file.
func loadCurveIdentity(_ path: String, option: String, log: (String) -> Void) throws -> CurveKeyPair {
    do {
        try CurveSupport.requireAvailable()
        let url = URL(fileURLWithPath: path)
        let pair = try CurveKeyPair.load(contentsOf: url, as: path)
        _ = try pair.requireSecret(file: path)
        if let warning = CurveKeyPair.permissionWarning(for: url, as: path) { log("warning: " + warning) }
        return pair
    } catch {
        throw CommandFailure("\(option): \(error)")
    }
}

/// `sura serve --curve-key [--curve-authorized-keys]`, read and checked before anything listens.
func serverCurveSecurity(keyFile: String, authorizedKeys: String?, log: (String) -> Void) throws -> CurveServerSecurity {
    let pair = try loadCurveIdentity(keyFile, option: "--curve-key", log: log)
    var security = CurveServerSecurity(keyPair: pair)
    if let authorizedKeys {
        let list: AuthorizedKeys
        do {
            list = try AuthorizedKeys.load(contentsOf: URL(fileURLWithPath: authorizedKeys), as: authorizedKeys)
        } catch {
            throw CommandFailure("--curve-authorized-keys: \(error)")
        }
        security.authorizedKeysFile = URL(fileURLWithPath: authorizedKeys)
        log("CurveZMQ: server key \(pair.publicKey); \(list.keys.count) client keys authorized by \(authorizedKeys) "
            + "(re-read when it changes), plus this server's own key")
    } else {
        log("CurveZMQ: server key \(pair.publicKey); encryption only: any client that knows this public key may connect "
            + "(add --curve-authorized-keys to restrict)")
    }
    return security
}

/// `sura worker --curve-server-key --curve-key`.
func clientCurveSecurity(serverKeyFile: String, keyFile: String, log: (String) -> Void) throws -> CurveClientSecurity {
    let server: CurveKeyPair
    do {
        try CurveSupport.requireAvailable()
        server = try CurveKeyPair.load(contentsOf: URL(fileURLWithPath: serverKeyFile), as: serverKeyFile)
    } catch {
        throw CommandFailure("--curve-server-key: \(error)")
    }
    let own = try loadCurveIdentity(keyFile, option: "--curve-key", log: log)
    log("CurveZMQ: scheduler key \(server.publicKey), this worker's key \(own.publicKey)")
    return CurveClientSecurity(serverKey: server.publicKey, keyPair: own)
}
