"""The zero-shot structured-output evaluation set: five schemas, 40 inputs each.

Written once by hand as a user of each schema might meet its inputs (short spoken
lines, typos, numbers as words, missing optional parts, several items), not tuned to
any prompt or model: no line was changed after seeing a model's reply. Each schema
has a one-line system prompt a new user would write and two examples (for the
few-shot figures only). ``benchmarks/structured.py`` measures validity on all of it;
``tests/integration/test_structured.py`` decodes a small sample.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Short = Annotated[str, msgspec.Meta(max_length=40)]
Word = Annotated[str, msgspec.Meta(max_length=24)]


# --- orders: a list of nested items, numbers as words, an optional enum ---------------
class LineItem(msgspec.Struct):
    item: Short
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)]


class Order(msgspec.Struct):
    items: Annotated[list[LineItem], msgspec.Meta(max_length=5)]
    fulfilment: Literal["pickup", "delivery"] | None = None


ORDERS = [
    "one coffee",
    "a dozen eggs",
    "two large lemonades",
    "three croissants and a latte",
    "can I get five bagels for pickup",
    "ten pencils delivered please",
    "I'd like a pizza, delivery",
    "two teas, one with milk",
    "six bottles of water and two bags of ice",
    "a loaf of bread",
    "twenty paper cups",
    "4 muffins",
    "one cheeseburger and fries for pickup",
    "I want seven roses delivered to my mum",
    "three packs of AA batteries",
    "half a dozen donuts",
    "a box of chocolates and two cards",
    "eleven balloons for the party, we'll collect them",
    "one large pepperoni pizza and a garlic bread",
    "could you send over a case of beer",
    "8 notebooks and 8 pens",
    "two hundred flyers",
    "a single espresso",
    "three kilos of apples",
    "one chair and two tables, delivery please",
    "a bag of dog food",
    "fifteen cupcakes for pickup at noon",
    "hi, two salads please",
    "I'll take the blue sweater, size medium",
    "nine ink cartridges",
    "a coffee and a muffin to go",
    "five litres of milk delivered",
    "can I order twelve red roses",
    "one phone charger",
    "thirty name badges",
    "a sandwich, no onions",
    "two tickets for the concert",
    "four cans of paint, white",
    "uh, three hot chocolates",
    "one pair of running shoes, delivered",
]


# --- contacts: optional fields ---------------------------------------------------------
class Contact(msgspec.Struct):
    name: Short
    phone: Word | None = None
    email: Short | None = None
    company: Short | None = None


CONTACTS = [
    "Maria Lopez, 555 0101",
    "you can reach John Smith at john.smith@example.com",
    "Sarah Chen from Acme, her number is 555 2233",
    "this is Ali Khan, call me on 07700 900123",
    "Emma Brown, emma@brown.io, works at Brown Design",
    "my name is Tom Baker",
    "Dr. Priya Nair, phone five five five one two three four",
    "contact: Lee Wong, lwong@northwind.com",
    "Ana Silva at Globex, ana.silva@globex.com, 555 7788",
    "it's Raj Patel again",
    "please add Julia Roberts, 020 7946 0000",
    "Ben from Initech, ben@initech.com",
    "Olga Petrova, mobile 555 9090",
    "send the invoice to accounts@umbrella.co, attention Mark Hill",
    "I'm Chloe Martin and my email is chloe.m@mail.fr",
    "George Adams, Adams & Sons, 555 4455",
    "the caller was Fatima Zahra, number 555 3131",
    "Kenji Sato, k.sato@sato.jp",
    "write down Paul Newman, no phone",
    "Lucy Gray works at Hooli, lucy@hooli.xyz",
    "hi it's Mohammed Ali, my number's 555 0000",
    "Sophie Turner, 555 1212, sophie.t@example.org",
    "Carlos Diaz from Diaz Plumbing",
    "new contact Hannah Lee, hannah.lee@uni.edu",
    "Peter Parker, Daily Bugle, 555 6262",
    "Ingrid Berg, phone 46 8 123 456",
    "you can email Omar at omar@cafe.net",
    "Rita Moreno, 555 8080, Moreno Films",
    "my name is Yuki Tanaka and I work for Tanaka Trading",
    "David Kim, 555 1111",
    "Grace Hopper, navy, grace@navy.mil",
    "Nina Simone at 555 2468",
    "add Victor Hugo, victor@hugo.fr, Les Editions",
    "Zoe Clark speaking, my cell is 555 1357",
    "the supplier contact is Frank Ocean, frank@ocean.com",
    "Ivan Ivanov",
    "Laura Palmer, 555 0666, Twin Peaks Diner",
    "Sam Wilson, sam.wilson@shield.gov",
    "call Helen Troy back on 555 4321",
    "Amir Haddad from Cedar Imports, amir@cedar.com, 555 9876",
]


# --- dates and times: enums, bounded numbers, numbers as words -------------------------
class Appointment(msgspec.Struct):
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] | None
    hour: Annotated[int, msgspec.Meta(ge=0, le=23)]
    minute: Annotated[int, msgspec.Meta(ge=0, le=59)] = 0
    minutes_long: Annotated[int, msgspec.Meta(ge=5, le=480)] | None = None


DATES = [
    "Monday at nine",
    "let's meet Tuesday at 3 pm",
    "Friday half past ten",
    "book me for Wednesday at 14:30 for an hour",
    "Saturday morning at eight",
    "Thursday at quarter to five in the afternoon",
    "next Sunday at noon",
    "tomorrow at 7:15",
    "Monday 9am, thirty minutes",
    "can we do Friday at two",
    "Wednesday at six in the evening for two hours",
    "at 11 on Tuesday",
    "Thursday, 16:00",
    "Saturday at half past one, about forty five minutes",
    "Sunday evening at seven thirty",
    "monday at ten past eight",
    "a call at 9:45 on Friday",
    "Tuesday lunchtime, say 12:30",
    "Wednesday 8 in the morning, 90 minutes",
    "how about Thursday at five",
    "the meeting is Monday at 13:00 for fifteen minutes",
    "Friday at midnight",
    "Saturday 10:20",
    "this Sunday at four pm",
    "Tuesday at twenty to three",
    "at three o'clock Wednesday",
    "Friday morning, 9:30, an hour and a half",
    "Monday at 6 pm sharp",
    "on Thursday at ten to nine",
    "the dentist is Tuesday at 2:15",
    "Saturday at eleven for two hours",
    "at 7 in the evening on Sunday",
    "Wednesday at noon for twenty minutes",
    "Friday 17:45",
    "Monday at half eight",
    "Thursday at one in the afternoon",
    "Tuesday at 10, one hour",
    "sometime Saturday at 3",
    "Sunday at 9:05",
    "Wednesday at quarter past four",
]


# --- addresses: a nested struct ------------------------------------------------------
class Address(msgspec.Struct):
    street: Short
    number: Annotated[int, msgspec.Meta(ge=1, le=99999)] | None
    city: Short
    postcode: Word | None = None


class Delivery(msgspec.Struct):
    recipient: Short
    address: Address


ADDRESSES = [
    "send it to Maria Lopez, 12 Oak Street, Springfield",
    "John Smith, 221 Baker Street, London NW1 6XE",
    "deliver to Sarah Chen at 5 Harbour Road, Sydney 2000",
    "Ali Khan, forty two Elm Avenue, Leeds",
    "Emma Brown, 1600 Pennsylvania Avenue, Washington 20500",
    "to Tom Baker, 7 Mill Lane, Bristol BS1 4DJ",
    "Ana Silva, Rua Augusta 100, Lisbon",
    "Raj Patel, 3 Park Road, Manchester M14 5AB",
    "the parcel goes to Lee Wong, 88 Nathan Road, Hong Kong",
    "Olga Petrova, 15 Nevsky Prospekt, Saint Petersburg 191186",
    "address: Ben Stone, 9 High Street, Oxford OX1 4AA",
    "please ship to Chloe Martin, 24 rue de Rivoli, Paris 75004",
    "Kenji Sato, 2 Chome Ginza, Tokyo",
    "George Adams, 300 Main Street, Boston 02108",
    "Fatima Zahra, 10 Palm Street, Casablanca",
    "to Lucy Gray at 77 Sunset Boulevard, Los Angeles 90028",
    "Carlos Diaz, 19 Calle Mayor, Madrid 28013",
    "Hannah Lee, 4 College Green, Dublin",
    "Peter Parker, 20 Ingram Street, New York 11375",
    "Ingrid Berg, Drottninggatan 50, Stockholm",
    "Omar Haddad, 6 Cedar Lane, Beirut",
    "deliver to Rita Moreno, 1 Hollywood Way, Burbank 91505",
    "Yuki Tanaka, 11 Sakura Street, Osaka 530",
    "David Kim, 350 Fifth Avenue, New York 10118",
    "Grace Hopper, 8 Navy Yard, Arlington",
    "Nina Simone, 14 Jazz Alley, Seattle",
    "Victor Hugo, 6 Place des Vosges, Paris 75004",
    "Zoe Clark, flat 2, 33 King Street, Glasgow G1 5QT",
    "Frank Ocean, 90 Ocean Drive, Miami Beach 33139",
    "Ivan Ivanov, 1 Red Square, Moscow",
    "to Laura Palmer at 240 Pine Street, Twin Peaks",
    "Sam Wilson, 55 Liberty Road, Baltimore 21201",
    "Helen Troy, 3 Acropolis Street, Athens 105 58",
    "Amir Haddad, 70 Harbour View, Haifa",
    "mail it to Paul Newman, Westport, 10 Beach Road",
    "Priya Nair, 18 MG Road, Bangalore 560001",
    "Sophie Turner, 2 Castle Hill, Edinburgh EH1 2NG",
    "Mohammed Ali, 400 Louisville Street, Louisville",
    "Julia Roberts, sixty Notting Hill Gate, London W11 3HT",
    "Mark Hill, Umbrella Plaza 1, Raccoon City",
]


# --- support tickets: nested struct, enums, a list, an optional number ------------------
class Customer(msgspec.Struct):
    name: Short
    account: Annotated[int, msgspec.Meta(ge=0, le=99999999)] | None = None


class Ticket(msgspec.Struct):
    customer: Customer
    category: Literal["billing", "technical", "account", "delivery", "other"]
    priority: Literal["low", "normal", "high"]
    products: Annotated[list[Word], msgspec.Meta(max_length=3)]
    summary: Annotated[str, msgspec.Meta(max_length=80)]


TICKETS = [
    "Hi, I'm Maria Lopez, account 4411, I was charged twice for my router this month",
    "This is John Smith. My internet has been down since yesterday, please hurry",
    "Sarah Chen here, my parcel with the new phone never arrived",
    "I can't log in to my account, name's Ali Khan",
    "Emma Brown, account number 99120, the TV box won't turn on",
    "Tom Baker. I want to change the email on my account",
    "hello, Ana Silva, my bill shows a charge I don't recognise",
    "it's urgent, Raj Patel, our whole office lost the fibre connection",
    "Lee Wong, my headphones came broken",
    "Olga Petrova, account 7070, how do I update my card",
    "Ben Stone, the laptop I ordered is a week late",
    "Chloe Martin, my password reset email never comes",
    "Kenji Sato, just a question about your opening hours",
    "George Adams here, account 123456, I need a copy of my invoice",
    "Fatima Zahra, the router and the modem both blink red",
    "Lucy Gray, please close my account",
    "Carlos Diaz, the delivery driver left my fridge outside in the rain",
    "Hannah Lee, account 5511, my phone won't connect to wifi",
    "Peter Parker, I was billed for a camera I returned",
    "Ingrid Berg, the app crashes every time I open it",
    "Omar Haddad, my order of three chairs only had two",
    "Rita Moreno, account 8080, I'd like to upgrade my plan",
    "Yuki Tanaka, the tablet screen is cracked on arrival",
    "David Kim, no dial tone on my landline since Monday, very urgent",
    "Grace Hopper, a small bug in your billing page, not urgent",
    "Nina Simone, my speaker and my remote stopped pairing",
    "Victor Hugo, account 31415, I want a refund for last month",
    "Zoe Clark, where is my package, it says delivered but it is not here",
    "Frank Ocean, my two-factor code never arrives",
    "Ivan Ivanov, the printer I bought makes a loud noise",
    "Laura Palmer, account 666, why did my bill double",
    "Sam Wilson, I moved and need to change my address",
    "Helen Troy, the mouse and keyboard in my order are the wrong colour",
    "Amir Haddad, the website says my card is invalid but it works elsewhere",
    "Paul Newman, account two four six eight, cancel my extra line please",
    "Priya Nair, the smart watch does not charge",
    "Sophie Turner, I got someone else's parcel",
    "Mohammed Ali, account 1001, can I pay by bank transfer",
    "Julia Roberts, my internet is slow every evening",
    "Mark Hill, urgent: the payment terminal in our shop is offline",
]


SYSTEMS = {
    "orders": "Extract the order.",
    "contacts": "Extract the contact details.",
    "dates": "Extract the day and time of the appointment.",
    "addresses": "Extract the recipient and the address.",
    "tickets": "Fill in the support ticket.",
}
SCHEMAS: dict[str, Any] = {
    "orders": Order,
    "contacts": Contact,
    "dates": Appointment,
    "addresses": Delivery,
    "tickets": Ticket,
}
INPUTS: dict[str, list[str]] = {
    "orders": ORDERS,
    "contacts": CONTACTS,
    "dates": DATES,
    "addresses": ADDRESSES,
    "tickets": TICKETS,
}
# two examples per schema, for the few-shot figures (none of them is an input above)
EXAMPLES: dict[str, list[tuple[str, Any]]] = {
    "orders": [
        ("two muffins and a tea for pickup", Order([LineItem("muffin", 2), LineItem("tea", 1)], "pickup")),
        ("a dozen roses", Order([LineItem("roses", 12)])),
    ],
    "contacts": [
        ("Jane Doe, 555 1000, jane@doe.com", Contact("Jane Doe", "555 1000", "jane@doe.com")),
        ("this is Bob Ray from Rayco", Contact("Bob Ray", company="Rayco")),
    ],
    "dates": [
        ("Tuesday at half past four for an hour", Appointment("tuesday", 16, 30, 60)),
        ("at nine in the morning", Appointment(None, 9)),
    ],
    "addresses": [
        (
            "Jane Doe, 5 Long Road, Cambridge CB2 1TN",
            Delivery("Jane Doe", Address("Long Road", 5, "Cambridge", "CB2 1TN")),
        ),
        ("to Bob Ray, Station Street, Perth", Delivery("Bob Ray", Address("Station Street", None, "Perth"))),
    ],
    "tickets": [
        (
            "Jane Doe, account 42, my modem is dead, urgent",
            Ticket(Customer("Jane Doe", 42), "technical", "high", ["modem"], "modem is dead"),
        ),
        (
            "Bob Ray, a question about my bill",
            Ticket(Customer("Bob Ray"), "billing", "normal", [], "question about the bill"),
        ),
    ],
}

assert all(len(v) == 40 for v in INPUTS.values()), {k: len(v) for k, v in INPUTS.items()}
