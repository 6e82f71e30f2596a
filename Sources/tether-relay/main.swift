import Glibc
import TetherConfig

// Subcommands by their first argument; anything else is `run` (flags only, as always).
let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "run":
    RunCommand.main(Array(arguments.dropFirst()))
case "token":
    TokenCommand.main(Array(arguments.dropFirst()))
case "check-config":
    CheckConfigCommand.main(Array(arguments.dropFirst()))
case "isolation-probe":
    // Hidden diagnostic: what a session container can reach (docs/ISOLATION.md).
    IsolationProbeCommand.main(Array(arguments.dropFirst()))
case "session-worker":
    // Hidden: the process inside a Docker-isolated session's container (docs/ISOLATION.md).
    SessionWorkerCommand.main(Array(arguments.dropFirst()))
case "config-doc":
    // Hidden: regenerates docs/CONFIGURATION.md.
    Output.standardOutput(ConfigurationDoc.markdown())
    exit(0)
case "help":
    Output.standardOutput(ConfigurationDoc.help())
    exit(0)
default:
    RunCommand.main(arguments)
}
