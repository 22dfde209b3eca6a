"""The process floor: what every serving process does around the request path, whether it serves alone
(service/server.py) or is one of N workers under a parent (service/workers.py). Both sit on top of this
package; nothing here imports either.

Start-up, in this one order for both: the settings checks (API keys, TLS files: startup.check_settings),
the gRPC port, the one preflight of the model repository when Triton is local
(preflight.preflight_repository), the metrics/health port, the HTTP port, then Triton. A failure is a
StartupFailure (service/errors.py), ended by exits.exit_for with its code from one table.
"""
