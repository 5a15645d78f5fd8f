#!/bin/bash
# shellcheck disable=SC2154 # moddir, initdir, systemdsystemunitdir, systemdutildir and SYSTEMCTL are dracut's.
# dracut module for attest-unlock: attest this node to a key broker and unlock the LUKS2
# root in the initramfs. Shaped like afterburn's and ignition's dracut modules.

# Only when the image builder asks for it (dracut --add attest-unlock, or add_dracutmodules+=
# in a dracut.conf.d snippet): a boot gate must never appear in an initramfs by accident.
check() {
    return 255
}

# systemd runs our units; crypt brings cryptsetup and dm_crypt; network brings the initramfs
# network stack (systemd-networkd with ip=/rd.neednet=) that reaches the broker.
depends() {
    echo systemd crypt network
}

install() {
    # The binary; ATTEST_UNLOCK_BINDIR lets a test build use target/release.
    local bindir="${ATTEST_UNLOCK_BINDIR:-/usr/bin}"
    inst_simple "$bindir/attest-unlock" /usr/bin/attest-unlock
    # The clevis pin names, so clevis tooling in the initramfs finds the pin too: decrypt for
    # `clevis luks unlock`, encrypt for Ignition's first boot (`clevis luks bind ... trustee`).
    ln_r /usr/bin/attest-unlock /usr/bin/clevis-decrypt-trustee
    ln_r /usr/bin/attest-unlock /usr/bin/clevis-encrypt-trustee

    inst_multiple cryptsetup cat

    # Wait for network-online.target when the command line asks for the network: nothing
    # else pulls it in, so After= alone would order nothing and the agent would race DHCP.
    inst_script "$moddir/attest-unlock-generator" "$systemdutildir/system-generators/attest-unlock-generator"

    # tss-esapi's TCTI loader dlopens the device TCTI at run time, which dracut's ELF
    # dependency walk cannot see.
    inst_libdir_file "libtss2-tcti-device.so*"

    # Units: from this module's directory when packaged with it, else from the unit
    # directory (ATTEST_UNLOCK_UNITDIR for test builds, the system unit dir otherwise).
    local unitdir="${ATTEST_UNLOCK_UNITDIR:-$systemdsystemunitdir}"
    local unit
    for unit in attest-unlock.service attest-unlock-explain.service; do
        if [ -e "$moddir/$unit" ]; then
            inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit"
        else
            inst_simple "$unitdir/$unit" "$systemdsystemunitdir/$unit"
        fi
    done
    $SYSTEMCTL -q --root "$initdir" enable attest-unlock.service
    $SYSTEMCTL -q --root "$initdir" enable attest-unlock-explain.service

    # An optional static config (most nodes need none: the LUKS2 token carries it).
    if [ -e /etc/attest-unlock/config.toml ]; then
        inst_simple /etc/attest-unlock/config.toml
    fi
}
