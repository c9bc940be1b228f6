import Coordinator
import Foundation
import Worker
import XCTest

/// Real `sura serve`, `sura worker` and `sura keys` processes on loopback with CurveZMQ: an
/// authorized worker serves HTTP requests, an unknown key and a worker without CURVE never
/// register (and the scheduler says why), local workers and the gateway reuse the server's key,
/// and malformed key files stop the processes with messages naming the file and line.
final class CurveProcessTests: XCTestCase {
    private var started: [SuraProcess] = []
    private var context: ZMQContext!
    private var directory: URL!
    /// server.key/.pub and worker.key/.pub written by `sura keys generate`; client and intruder by the library.
    private var server: CurveKeyPair!
    private var worker: CurveKeyPair!
    private var client: CurveKeyPair!
    private var intruder: CurveKeyPair!

    override func setUpWithError() throws {
        _ = try SuraProcess.executable()
        try XCTSkipUnless(CurveSupport.isAvailable, "this libzmq has no CURVE support")
        context = try ZMQContext()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("sura-curve-process-\(UUID().uuidString)")
        for name in ["server", "worker"] {
            let keys = try run(["keys", "generate", "--out", path("keys"), "--name", name])
            XCTAssertEqual(keys.status, 0, keys.output)
            XCTAssertTrue(keys.output.contains("public-key = "), keys.output)
        }
        server = try CurveKeyPair.load(contentsOf: URL(fileURLWithPath: path("keys/server.key")))
        worker = try CurveKeyPair.load(contentsOf: URL(fileURLWithPath: path("keys/worker.key")))
        client = try CurveKeyPair.generate()
        try client.write(directory: directory.appendingPathComponent("keys"), name: "client")
        intruder = try CurveKeyPair.generate()
        try intruder.write(directory: directory.appendingPathComponent("keys"), name: "intruder")
        // The authorized list: the worker's .pub appended as it is, and the client's bare key with a label.
        let list = try String(contentsOfFile: path("keys/worker.pub"), encoding: .utf8) + "\(client.publicKey) test-client\n"
        try list.write(toFile: path("authorized_keys"), atomically: true, encoding: .utf8)
    }

    override func tearDown() {
        for process in started.reversed() { process.stop() }
        if (testRun?.failureCount ?? 0) > 0 { for process in started { print(process.transcript) } }
        started.removeAll()
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    private func path(_ relative: String) -> String { directory.appendingPathComponent(relative).path }

    /// Runs a short-lived `sura` command to its end: exit status and all output.
    private func run(_ arguments: [String]) throws -> (status: Int32?, output: String) {
        let process = try SuraProcess(arguments, name: arguments.prefix(2).joined(separator: " "))
        started.append(process)
        let status = process.waitForExit(timeout: 30)
        Thread.sleep(forTimeInterval: 0.1)  // let the reader threads take the last lines
        return (status, process.output.all.joined(separator: "\n"))
    }

    private func serve(_ extra: [String], http: Bool = false) throws -> ServeProcess {
        let serve = try ServeProcess(["--curve-key", path("keys/server.key")] + extra, http: http)
        started.append(serve.serve)
        return serve
    }

    private func worker(_ serve: ServeProcess, _ name: String, _ extra: [String]) throws -> SuraProcess {
        let process = try serve.worker(name, extra)
        started.append(process)
        return process
    }

    /// Worker names the scheduler reports, asked as the authorized test client.
    private func workerNames(_ serve: ServeProcess) throws -> [String] {
        let schedulerClient = try SchedulerClient(endpoint: serve.frontend, context: context,
                                                  curve: CurveClientSecurity(serverKey: server.publicKey, keyPair: client))
        defer { schedulerClient.close() }
        return try schedulerClient.status(timeout: 5).workers.map(\.name)
    }

    func testAuthorizedWorkerRegistersAndAnswersHTTP() throws {
        let serve = try serve(["--curve-authorized-keys", path("authorized_keys")], http: true)
        XCTAssertNotNil(serve.serve.line(containing: "curve=\(server.publicKey)", timeout: 1), "the first line shows the server's public key")
        XCTAssertNotNil(serve.serve.line(containing: "2 client keys authorized by", timeout: 5))
        _ = try worker(serve, "trusted", ["--curve-server-key", path("keys/server.pub"), "--curve-key", path("keys/worker.key")])
        XCTAssertTrue(eventually(timeout: 20, interval: 0.1) { (try? workerNames(serve)) == ["trusted"] }, "the worker never registered")
        XCTAssertNotNil(serve.serve.line(containing: "backend: accepted client key \(worker.publicKey) from 127.0.0.1", timeout: 5))
        // Over HTTP: the gateway's own CURVE connection to the front end, then the worker.
        let response = try RawHTTP.generate(port: serve.httpPort!, ["prompt": "a red bag", "n": 2])
        XCTAssertEqual(response.status, 200, response.text)
        XCTAssertEqual((response.json?["data"] as? [[String: Any]])?.count, 2)
        // A front-end client without CURVE gets nothing.
        let plain = try SchedulerClient(endpoint: serve.frontend, context: context)
        defer { plain.close() }
        XCTAssertThrowsError(try plain.status(timeout: 1))
    }

    func testUnauthorizedWorkerNeverRegistersAndTheRefusalIsLogged() throws {
        let serve = try serve(["--curve-authorized-keys", path("authorized_keys")])
        let unknown = try worker(serve, "unknown", ["--curve-server-key", path("keys/server.pub"), "--curve-key", path("keys/intruder.key")])
        XCTAssertNotNil(serve.serve.line(containing: "backend: refused client key \(intruder.publicKey) from 127.0.0.1: not listed in", timeout: 10))
        XCTAssertNotNil(unknown.line(containing: "refused this process's key \(intruder.publicKey)", timeout: 10), "the worker explains it")
        Thread.sleep(forTimeInterval: 1.5)
        XCTAssertEqual(try workerNames(serve), [])
        XCTAssertTrue(unknown.process.isRunning, "it keeps trying, in case the key is authorized later")
        // Authorizing the key in the file lets the same worker in, without restarting anything.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path("authorized_keys")))
        handle.seekToEndOfFile()
        handle.write(Data("\(intruder.publicKey) now trusted\n".utf8))
        handle.closeFile()
        XCTAssertTrue(eventually(timeout: 20, interval: 0.1) { (try? workerNames(serve)) == ["unknown"] }, "the re-read list was not used")
    }

    func testWorkerWithoutCurveCannotRegister() throws {
        let serve = try serve([])
        XCTAssertNotNil(serve.serve.line(containing: "encryption only", timeout: 5))
        let plain = try worker(serve, "plain", [])
        // The side that reads the other's whole greeting first sees the mismatch; the other sees a
        // closed connection. Either way one of them says what is wrong.
        XCTAssertTrue(eventually(timeout: 10, interval: 0.1) {
            serve.serve.output.contains("a peer of the backend") && serve.serve.output.contains("does not use CURVE")
                || plain.output.contains("pass --curve-server-key and --curve-key")
        }, "nobody explained the failed handshake")
        // A worker that has the server's public key gets in: no authorized list means any such key.
        _ = try worker(serve, "anyone", ["--curve-server-key", path("keys/server.pub"), "--curve-key", path("keys/intruder.key")])
        XCTAssertTrue(eventually(timeout: 20, interval: 0.1) { (try? workerNames(serve)) == ["anyone"] })
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertEqual(try workerNames(serve), ["anyone"], "the plain worker never registered")
    }

    func testLocalWorkersAndGatewayReuseTheServerKey() throws {
        // Nobody is authorized by the file: only the server's own key, which local workers and the gateway use.
        try "# nobody yet\n".write(toFile: path("empty_keys"), atomically: true, encoding: .utf8)
        let serve = try serve(["--curve-authorized-keys", path("empty_keys"), "--workers", "1"], http: true)
        let response = try RawHTTP.generate(port: serve.httpPort!, ["prompt": "a blue shoe"], timeout: 30)
        XCTAssertEqual(response.status, 200, response.text)
        XCTAssertNil(serve.serve.output.all.first { $0.contains("refused") }, "nothing of its own was refused")
    }

    func testMalformedKeyFilesStopTheProcessesWithTheFileNamed() throws {
        let good = server.publicKey.z85
        try "# broken\npublic-key = \(good.dropLast(3))\n".write(toFile: path("broken.key"), atomically: true, encoding: .utf8)
        try "\(good)\n# fine so far\nnot a key\n".write(toFile: path("broken_list"), atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["serve", "--no-http", "--curve-key", path("broken.key")], "--curve-key: \(path("broken.key")):2: public-key: a CURVE key is 40 Z85 characters, got 37"),
            (["serve", "--no-http", "--curve-key", path("keys/server.pub")], "--curve-key: \(path("keys/server.pub")): has no secret-key line"),
            (["serve", "--no-http", "--curve-key", path("keys/server.key"), "--curve-authorized-keys", path("broken_list")],
             "--curve-authorized-keys: \(path("broken_list")):3: expected a Z85 public key"),
            (["serve", "--no-http", "--curve-key", path("missing.key")], "--curve-key: \(path("missing.key")): does not exist"),
            (["worker", "--curve-server-key", path("broken.key"), "--curve-key", path("keys/worker.key")],
             "--curve-server-key: \(path("broken.key")):2:"),
            (["worker", "--curve-server-key", path("keys/server.pub"), "--curve-key", path("keys/worker.pub")],
             "--curve-key: \(path("keys/worker.pub")): has no secret-key line"),
            (["worker", "--curve-server-key", path("keys/server.pub")], "--curve-server-key and --curve-key go together"),
            (["serve", "--no-http", "--curve-authorized-keys", path("authorized_keys")], "--curve-authorized-keys needs --curve-key"),
        ]
        for (arguments, expected) in cases {
            let result = try run(arguments)
            XCTAssertNotNil(result.status, "\(arguments) did not exit")
            XCTAssertNotEqual(result.status, 0, "\(arguments)")
            XCTAssertTrue(result.output.contains(expected), "\(arguments): expected '\(expected)' in:\n\(result.output)")
        }
    }

    func testKeysGenerateWritesPrivateFilesAndNeverOverwritesSilently() throws {
        let attributes = { (file: String) in try FileManager.default.attributesOfItem(atPath: self.path(file)) }
        XCTAssertEqual((try attributes("keys/worker.key")[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        XCTAssertEqual((try attributes("keys/worker.pub")[.posixPermissions] as? NSNumber)?.intValue, 0o644)
        let again = try run(["keys", "generate", "--out", path("keys"), "--name", "worker"])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.output.contains("already exists; pass --force"), again.output)
        XCTAssertEqual(try CurveKeyPair.load(contentsOf: URL(fileURLWithPath: path("keys/worker.key"))), worker, "the old key is intact")
        let forced = try run(["keys", "generate", "--out", path("keys"), "--name", "worker", "--force"])
        XCTAssertEqual(forced.status, 0, forced.output)
        XCTAssertNotEqual(try CurveKeyPair.load(contentsOf: URL(fileURLWithPath: path("keys/worker.key"))), worker)
        let shown = try run(["keys", "show", path("keys/server.pub")])
        XCTAssertEqual(shown.status, 0, shown.output)
        XCTAssertTrue(shown.output.contains("public-key = \(server.publicKey)") && shown.output.contains("(public key only)"), shown.output)
        let badName = try run(["keys", "generate", "--out", path("keys"), "--name", "../escape"])
        XCTAssertNotEqual(badName.status, 0)
        XCTAssertTrue(badName.output.contains("--name must be"), badName.output)
    }
}
