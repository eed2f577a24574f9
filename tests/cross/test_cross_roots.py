"""roots.py itself: it reads the machine's mirror, and fails loudly, naming what is missing."""

import glob
import os

import pytest

import roots as rootsmod


def test_mirror_comes_from_the_machines_own_sources():
    uri, _ = rootsmod.debian_mirror()
    texts = []
    for path in ["/etc/apt/sources.list"] + glob.glob("/etc/apt/sources.list.d/*"):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    assert any(uri in t for t in texts), uri


def test_unknown_root_is_refused_by_name():
    with pytest.raises(rootsmod.RootError, match="unknown root 'sparc'"):
        rootsmod.ensure_root("sparc")


def test_missing_qemu_names_the_package():
    with pytest.raises(rootsmod.RootError, match="qemu-no-such-cpu-static is missing: apt-get install qemu-user-static"):
        rootsmod.ensure_binfmt("no-such-cpu")


def test_missing_package_is_named(tmp_path):
    with rootsmod._Lock("apt-bookworm"), pytest.raises(rootsmod.RootError, match="no-such-package-sshkeep"):
        rootsmod._apt_download("bookworm", "armhf", ("busybox-static", "no-such-package-sshkeep"), str(tmp_path))


def test_binfmt_entries_registered_for_every_emulated_root():
    for name in rootsmod.FOREIGN:
        qemu = rootsmod.ROOTS[name][4]
        rootsmod.ensure_binfmt(qemu)
        with open(os.path.join(rootsmod.BINFMT_DIR, "qemu-" + qemu)) as f:
            text = f.read()
        assert text.startswith("enabled") and "flags: " in text, text
        assert "F" in text.split("flags: ")[1].split()[0], "qemu must be opened at registration (flag F)"


def test_usr_merge_moves_lib_into_usr(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "lib", "arm-linux-gnueabihf"))
    os.makedirs(os.path.join(root, "usr", "lib", "arm-linux-gnueabihf"))
    open(os.path.join(root, "lib", "arm-linux-gnueabihf", "libz.so.1"), "w").close()
    os.symlink("arm-linux-gnueabihf/libz.so.1", os.path.join(root, "lib", "libz-link"))
    open(os.path.join(root, "usr", "lib", "arm-linux-gnueabihf", "libtomcrypt.so.1"), "w").close()
    rootsmod.usr_merge(root)
    assert os.readlink(os.path.join(root, "lib")) == "usr/lib"
    assert sorted(os.listdir(os.path.join(root, "usr", "lib", "arm-linux-gnueabihf"))) == \
        ["libtomcrypt.so.1", "libz.so.1"]
    assert os.path.exists(os.path.join(root, "lib", "libz-link"))  # relative links still resolve
