"""An independent client: the `varlink` package from PyPI calls every method of a running
vfio-powerd (the socket path is argv[1], a managed device argv[2]) and prints what it got as
one JSON object, which ControlServiceTests asserts on."""
import json
import sys

import varlink

socket, device = sys.argv[1], sys.argv[2]
out = {}
with varlink.Client(address=f"unix:{socket}") as client:
    with client.open("org.varlink.service") as service:
        info = service.GetInfo()
        out["interfaces"] = info["interfaces"]
        out["description_starts"] = service.GetInterfaceDescription("io.vfiopowerd.Manager")["description"].splitlines()[0]
    with client.open("io.vfiopowerd.Manager", namespaced=False) as manager:
        out["list"] = [d["address"] for d in manager.ListDevices()["devices"]]
        out["get_state"] = manager.GetDevice(device)["device"]["state"]
        out["statistics_devices"] = manager.GetStatistics()["statistics"]["devices"]
        out["wake_state"] = manager.Wake(device, 60)["device"]["state"]
        out["arm_state"] = manager.Arm(device)["device"]["state"]
        manager.Reload()
        out["reload"] = "ok"
        try:
            manager.GetDevice("0000:7f:00.0")
        except varlink.VarlinkError as error:
            out["no_such_device"] = error.error()
        monitored = []
        for reply in manager.Monitor(_more=True):
            monitored.append(reply["device"]["address"])
            if len(monitored) == len(out["list"]):
                break
        out["monitor"] = monitored
print(json.dumps(out, sort_keys=True))
