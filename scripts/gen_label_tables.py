#!/usr/bin/env python3
"""Regenerate the label tables in src/labels/ from the `timm` wheel's _info files.

Usage: python3 scripts/gen_label_tables.py [path/to/timm/data/_info]
Without a path, the wheel is fetched with `pip download --no-deps timm`.
timm's _info files are Apache-2.0 (facts: wnid lists and index lists).
"""
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

OUT = pathlib.Path(__file__).resolve().parent.parent / "src" / "labels"

# protocol §9: one ImageNet index per ObjectNet class that overlaps ImageNet-1k.
OBJECTNET_INDICES = """409 412 414 418 419 423 434 440 446 455 457 462 463 470 473 479 487 499 504
507 508 531 533 539 543 545 549 550 560 567 578 587 588 589 601 606 608 610 618 619 620 623 626 629
630 632 644 647 651 658 659 664 671 673 677 679 695 696 700 703 720 721 725 728 729 731 732 737 740
742 752 761 769 770 772 773 774 778 783 790 792 797 804 806 809 811 813 828 834 837 841 842 846 849
850 851 859 868 879 882 883 893 898 902 907 909 923 930 950 951 954 968 999""".split()


# ObjectNet's own mapping (objectnet-1.0/mappings, as copied into
# modestyachts/imagenet-testbed src/eval_settings/objectnet_metadata): the 113
# folders whose class overlaps ImageNet-1k, in the order of the CLIP
# benchmark's `.cls` (folder names sorted as strings); folder, class name,
# mapped ImageNet-1k indices (first = the one protocol §9 scores, 9 classes map
# to more than one).
OBJECTNET_CLASSES = """\
alarm_clock	alarm clock	409 530
backpack	backpack	414
banana	banana	954
band_aid	band aid	419
basket	basket	790
beer_bottle	beer bottle	440
bench	bench	703
bicycle	bicycle	671 444
binder_closed	binder (closed)	446
bottle_cap	bottle cap	455
bread_loaf	bread loaf	930
broom	broom	462
bucket	bucket	463
butchers_knife	butcher's knife	499
can_opener	can opener	473
candle	candle	470
cellphone	cellphone	487
chair	chair	423 559 765
clothes_hamper	clothes hamper	588
coffee_french_press	coffee/french press	550
combination_lock	combination lock	507
computer_mouse	computer mouse	673
desk_lamp	desk lamp	846
doormat	doormat	539
dress	dress	578
dress_shoe_men	dress shoe (men)	630
drill	drill	740
drinking_cup	drinking cup	968
drying_rack_for_dishes	drying rack for plates	729
envelope	envelope	549
fan	fan	545
frying_pan	frying pan	567
full_sized_towel	bath towel	434
hair_dryer	hair dryer	589
hammer	hammer	587
hand_towel_or_rag	dishrag or hand towel	533
helmet	helmet	560 518
iron_for_clothes	iron (for clothes)	606
jeans	jeans	608
keyboard	keyboard	508
ladle	ladle	618
lampshade	lampshade	619
laptop_open	laptop (open)	620
lemon	lemon	951
letter_opener	letter opener	623
lighter	lighter	626
lipstick	lipstick	629
match	match	644
measuring_cup	measuring cup	647
microwave	microwave	651
mixing_salad_bowl	mixing / salad bowl	659
monitor	monitor	664
mug	mug	504
nail_fastener	nail (fastener)	677
necklace	necklace	679
orange	orange	950
padlock	padlock	695
paintbrush	paintbrush	696
paper_towel	paper towel	700
pen	pen	418 749 563
pill_bottle	pill bottle	720
pillow	pillow	721
pitcher	pitcher	725
plastic_bag	plastic bag	728
plate	plate	923
plunger	plunger	731
pop_can	pop can	737
portable_heater	portable heater	811
printer	printer	742
remote_control	remote control	761
ruler	ruler	769
running_shoe	running shoe	770
safety_pin	safety pin	772
salt_shaker	salt shaker	773
sandal	sandal	774
screw	screw	783
shovel	shovel	792
skirt	skirt	601 655 689
sleeping_bag	sleeping bag	797
soap_dispenser	soap dispenser	804
sock	sock	806
soup_bowl	soup bowl	809
spatula	spatula	813
speaker	speaker	632
still_camera	still camera	732 759
strainer	strainer	828
stuffed_animal	stuffed animal	850
suit_jacket	suit jacket	834
sunglasses	sunglasses	837
sweater	sweater	841
swimming_trunks	swimming trunks	842
t-shirt	t-shirt	610
teapot	teapot	849
tennis_racket	tennis racket	752
tie	tie	457 906
toaster	toaster	859
toilet_paper_roll	toilet paper roll	999
trash_bin	trash bin	412
tray	tray	868
tv	tv	851
umbrella	umbrella	879
vacuum_cleaner	vacuum cleaner	882
vase	vase	883
wallet	wallet	893
watch	watch	531
water_bottle	water bottle	898
weight_exercise	weight (exercise)	543
weight_scale	weight scale	778
wheel	wheel	479 694
whistle	whistle	902
wine_bottle	wine bottle	907
winter_glove	winter glove	658
wok	wok	909
"""


def info_dir() -> pathlib.Path:
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    tmp = pathlib.Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "timm", "-d", str(tmp)], check=True)
    wheel = next(tmp.glob("timm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("timm/data/_info/"):
                z.extract(name, tmp)
    return tmp / "timm" / "data" / "_info"


def main() -> None:
    info = info_dir()
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    assert len(synsets) == 1000 and synsets == sorted(synsets), "expected the 1000 sorted wnids"
    lemmas = {}
    for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines():
        wnid, names = line.split("\t", 1)
        lemmas[wnid] = names.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "imagenet1k.tsv", "w") as f:
        f.write("# index\twnid\tlemmas (first = english_label); generated by scripts/gen_label_tables.py from timm's _info\n")
        for i, wnid in enumerate(synsets):
            f.write(f"{i}\t{wnid}\t{lemmas[wnid]}\n")
    for name in ("imagenet_a", "imagenet_r"):
        idx = [int(i) for i in (info / f"{name}_indices.txt").read_text().split()]
        wnids = (info / f"{name}_synsets.txt").read_text().split()
        assert len(idx) == 200 and len(wnids) == 200
        # Both lists are sorted, so the subset index i is the i-th line.
        assert idx == sorted(idx) and wnids == sorted(wnids)
        assert all(synsets[i] == w for i, w in zip(idx, wnids)), f"{name}: indices and synsets disagree"
        with open(OUT / f"{name}.tsv", "w") as f:
            f.write(f"# subset index\timagenet-1k index\twnid; generated by scripts/gen_label_tables.py from timm's _info\n")
            for k, (i, w) in enumerate(zip(idx, wnids)):
                f.write(f"{k}\t{i}\t{w}\n")
    real = json.loads((info / "imagenet_real_labels.json").read_text())
    assert len(real) == 50000
    with open(OUT / "imagenet_real.txt", "w") as f:
        f.write("# ReaL labels (Beyer et al. 2020): line n+1 = ILSVRC2012_val_{n+1:08d}; empty = no ReaL label; from timm's _info\n")
        for labels in real:
            assert all(0 <= l < 1000 for l in labels)
            f.write(" ".join(str(l) for l in labels) + "\n")
    assert len(OBJECTNET_INDICES) == 113
    objectnet = [line.split("\t") for line in OBJECTNET_CLASSES.strip("\n").splitlines()]
    folders = [row[0] for row in objectnet]
    assert len(objectnet) == 113 and folders == sorted(folders), "expected the 113 folders in sorted order"
    firsts = [int(row[2].split()[0]) for row in objectnet]
    assert sorted(firsts) == [int(i) for i in OBJECTNET_INDICES], "mapping disagrees with protocol §9"
    with open(OUT / "objectnet.tsv", "w") as f:
        f.write("# objectnet index (CLIP benchmark .cls)\timagenet-1k index\twnid\tfolder\tclass name\tall mapped imagenet-1k indices; generated by scripts/gen_label_tables.py\n")
        for k, (folder, name, ids) in enumerate(objectnet):
            first = int(ids.split()[0])
            f.write(f"{k}\t{first}\t{synsets[first]}\t{folder}\t{name}\t{ids}\n")
    print(f"wrote tables to {OUT}")


if __name__ == "__main__":
    main()
