"""Copy an OCI layout (tag latest) to DEST with the config's first diff_id replaced by zeros."""
import hashlib, json, os, shutil, sys

src, dest = sys.argv[1], sys.argv[2]
shutil.copytree(src, dest)
blobs = os.path.join(dest, "blobs", "sha256")

def read(d):
    with open(os.path.join(blobs, d.split(":")[1]), "rb") as f:
        return f.read()

def write(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)

index = json.load(open(os.path.join(dest, "index.json")))
desc = index["manifests"][0]
manifest = json.loads(read(desc["digest"]))
config = json.loads(read(manifest["config"]["digest"]))
config["rootfs"]["diff_ids"][0] = "sha256:" + "0" * 64
manifest["config"]["digest"], manifest["config"]["size"] = write(json.dumps(config).encode())
desc["digest"], desc["size"] = write(json.dumps(manifest).encode())
json.dump(index, open(os.path.join(dest, "index.json"), "w"))
